"""scripts/bench/variants.py: its options, and a tiny dry run that prints the table (not the real 27 runs)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench" / "variants.py"
TEXT = "".join(f"{i} little pigs went to market on day {i % 7}; {i * i} coins were spent.\n" for i in range(200))


def run(*argv):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], capture_output=True, text=True)


@pytest.mark.parametrize("argv, message", [
    (["--rows", "gpt2,batchnorm"], "--rows: unknown row 'batchnorm'"),
    (["--seeds", "1,x"], "--seeds needs a comma-separated list of integers"),
    (["--seeds"], "--seeds needs a value"),
    (["--norm", "rmsnorm"], "--norm is set by this script"),
    (["--out_dir=x"], "--out_dir is set by this script"),
    (["--max_iters", "-3"], "--max_iters must be 0 or more"),
])
def test_bad_options_are_one_line_errors_before_any_run(argv, message):
    result = run(*argv)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1


def test_a_tiny_dry_run_prints_one_row_per_variant(tmp_path):
    corpus = tmp_path / "pigs.txt"
    corpus.write_text(TEXT)
    result = run("--rows", "gpt2,modern", "--seeds", "1,2", "--data", corpus, "--max_iters", 2, "--n_layer", 1,
                 "--n_embd", 16, "--block_size", 16, "--batch_size", 2, "--eval_iters", 1, "--eval_interval", 2,
                 "--log_interval", 1, "--warmup_iters", 1)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 2  # header and rule, 2 rows
    assert sum(line.startswith('{"row": ') for line in result.stdout.splitlines()) == 4  # 2 rows x 2 seeds
    gpt2, modern = lines[-2].split(" | "), lines[-1].split(" | ")
    assert gpt2[0] == "| gpt2" and modern[0] == "| modern" and "--norm rmsnorm" in modern[1]
    assert int(gpt2[2].replace(",", "")) != int(modern[2].replace(",", ""))  # wpe gone, lm_head added
    mean = float(gpt2[3].split(" +- ")[0])
    assert 1.0 < mean < 6.0 and gpt2[3].endswith("(2)")  # a loss near ln(vocab) after 2 steps, over 2 seeds
    assert "--rows gpt2 --seeds 1,2 --data" in gpt2[5]
