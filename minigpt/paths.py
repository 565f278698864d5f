"""Where minigpt keeps prepared data and downloaded checkpoints.

By default these are the `data/` and `checkpoints/` folders at the root of the
repository (the package is installed editable, `pip install -e .`); the
environment variables MINIGPT_DATA_DIR and MINIGPT_CHECKPOINTS_DIR move them.
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return Path(os.environ.get("MINIGPT_DATA_DIR", REPO_ROOT / "data"))


def checkpoints_dir() -> Path:
    return Path(os.environ.get("MINIGPT_CHECKPOINTS_DIR", REPO_ROOT / "checkpoints"))
