"""scripts/bench/bench.py: its options fail in one line."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench" / "bench.py"


def run(*argv):
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True)


def test_tuned_malloc_without_torch_is_one_line():
    result = run("--torch-tuned-malloc")
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr == "error: --torch-tuned-malloc times PyTorch a second way: add --compare-torch\n"


def test_negative_workers_is_one_line():
    result = run("--workers", "-1")
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.startswith("error: --workers must be 0 or more") and result.stderr.count("\n") == 1
