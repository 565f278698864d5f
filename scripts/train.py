"""Train a GPT: `python scripts/train.py` (pydoc text, characters, 4 layers) or with nanoGPT's options.

    python scripts/train.py --dataset shakespeare --max_iters 2000
    python scripts/train.py --config my_run.toml --learning_rate 3e-4
    python scripts/train.py --init_from resume --out_dir out        # continue a run
    python scripts/train.py --init_from gpt2 --data my_text.txt     # fine-tune GPT-2
    mpiexec -n 4 python scripts/train.py ...                        # one run on 4 processes (pip install -e '.[mpi]')

See `python scripts/train.py --help` for every option and its default.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from minigpt.distributed import run_cli  # noqa: E402
from minigpt.trainer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
