"""scripts/bench/bench_nanogpt.py: the two commands train the same shape, and a bad checkout is one line.

And scripts/bench/bench_generate.py's gemv bound: the products it streams are the model's weights, read once each.
Nothing here runs either training command.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "bench"
sys.path.insert(0, str(SCRIPTS))
import bench_generate  # noqa: E402
import bench_nanogpt  # noqa: E402
from bench_train import RECIPE  # noqa: E402

from minigpt.errors import MinigptError  # noqa: E402
from minigpt.model import GPT, GPTConfig  # noqa: E402


def option(argv, name):
    """The value of --name in train.py's style (`--name value`) or nanoGPT's (`--name=value`)."""
    for i, arg in enumerate(argv):
        if arg == f"--{name}":
            return argv[i + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    raise KeyError(name)


def test_with_iters_sets_both_the_run_and_the_schedule_length():
    options = bench_nanogpt.with_iters(RECIPE, 20)
    assert option(options, "max_iters") == option(options, "lr_decay_iters") == "20"
    assert option(RECIPE, "max_iters") == "2000"  # the recipe itself is left as it was
    assert len(options) == len(RECIPE)


@pytest.mark.parametrize("max_iters", [2000, 20])
def test_both_commands_train_the_same_shape_for_as_long(tmp_path, max_iters):
    mine = bench_nanogpt.minigpt_command(max_iters, tmp_path / "a")
    theirs = bench_nanogpt.nanogpt_command("python", max_iters, tmp_path / "b")
    assert mine[1].endswith("scripts/train.py") and theirs[1:3] == ["train.py", "config/train_shakespeare_char.py"]
    for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "eval_iters", "max_iters",
                 "lr_decay_iters"):
        assert int(option(mine, name)) == int(option(theirs, name)), name
    assert float(option(mine, "dropout")) == float(option(theirs, "dropout")) == 0.0
    assert option(theirs, "device") == "cpu" and option(theirs, "compile") == "False"
    assert option(mine, "out_dir") == str(tmp_path / "a") and option(theirs, "out_dir") == str(tmp_path / "b")


def test_a_folder_that_is_not_nanogpt_or_not_prepared_is_refused(tmp_path):
    with pytest.raises(MinigptError, match="is not a nanoGPT checkout"):
        bench_nanogpt.check_nanogpt_dir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "train.py").write_text("")
    (tmp_path / "config" / "train_shakespeare_char.py").write_text("")
    (tmp_path / "data" / "shakespeare_char").mkdir(parents=True)
    (tmp_path / "data" / "shakespeare_char" / "train.bin").write_bytes(b"")
    with pytest.raises(MinigptError, match=r"has no val\.bin, meta\.pkl: run `python data/shakespeare_char/prepare\.py`"):
        bench_nanogpt.check_nanogpt_dir(tmp_path)


def test_the_script_says_so_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPTS / "bench_nanogpt.py"), "--nanogpt-dir", str(tmp_path),
                             "--torch-python", sys.executable], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --nanogpt-dir") and result.stderr.count("\n") == 1


def test_the_gemv_bound_streams_every_weight_matrix_once_head_last():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=100), seed=0)
    gemvs = bench_generate.decode_gemvs({name: w.shape for name, w in model.params.items()})
    matrices = [w.shape for name, w in model.params.items() if w.ndim == 2 and "wpe" not in name]
    assert sorted(shape for shape, _ in gemvs) == sorted(matrices)  # every matrix but the position table
    assert gemvs[-1] == ((100, 32), True) and not any(head for _, head in gemvs[:-1])
    seconds, nbytes = bench_generate.gemv_bound(gemvs, repeats=1)
    assert nbytes == 4 * sum(int(np.prod(shape)) for shape in matrices)
    assert 1 in seconds and all(t > 0 for t in seconds.values())
    seconds, batch_nbytes = bench_generate.gemv_bound(gemvs, repeats=1, batch_size=8)  # (8, in) @ W products
    assert batch_nbytes == nbytes and 1 in seconds and all(t > 0 for t in seconds.values())
