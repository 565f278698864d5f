"""Training on several processes: `mpiexec -n 2` gives one process's results, logs once, resumes anywhere.

These start `mpiexec` (about a second each) and skip without it or without mpi4py
(pip install -e '.[mpi]'; the dev extra brings both). The NCCL path needs CuPy
and a CUDA device: without one its test skips.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minigpt.backend import gpu_available
from minigpt.checkpoint import load_trainer_state
from minigpt.data import get_batch
from minigpt.trainer import main

REPO = Path(__file__).resolve().parent.parent
TEXT = "".join(f"{i} little pigs went to market on day {i % 7}; {i * i} coins were spent.\n" for i in range(300))
# float64 with dropout and accumulation: every rank's share, the masks and the sums are checked at once
TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16", "--batch_size", "4",
        "--eval_iters", "2", "--log_interval", "1", "--sample_tokens", "8", "--warmup_iters", "2",
        "--dtype", "float64", "--dropout", "0.1", "--gradient_accumulation_steps", "2"]

# mpiexec on PATH, or beside this Python (the mpich wheel puts it in the environment's bin/)
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason="needs mpiexec and mpi4py: pip install -e '.[mpi]' (the dev extra brings them)",
)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "pigs.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def mpiexec(*argv, ranks=2, **kwargs):
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, *map(str, argv)],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=120, **kwargs)


def train_losses(out_dir):
    records = [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]
    iters = [r["iter"] for r in records if "val_loss" not in r]
    assert len(iters) == len(set(iters)), "a record was written twice"
    return {r["iter"]: r["train_loss"] for r in records if "val_loss" not in r}


def assert_close(losses, expected, rel):
    assert sorted(losses) == sorted(expected)
    for it, value in expected.items():
        assert losses[it] == pytest.approx(value, rel=rel), it


def test_each_rank_reads_its_rows_of_the_same_draw():
    """get_batch(rows=...) returns those rows of the whole batch, and the generator advances alike."""
    tokens = np.arange(1000) % 251
    whole_rng, part_rng = np.random.default_rng(0), np.random.default_rng(0)
    for _ in range(3):
        x, y = get_batch(tokens, 6, 8, whole_rng)
        xr, yr = get_batch(tokens, 6, 8, part_rng, rows=np.array([1, 4]))
        np.testing.assert_array_equal(xr, x[[1, 4]])
        np.testing.assert_array_equal(yr, y[[1, 4]])
    empty, _ = get_batch(tokens, 6, 8, part_rng, rows=np.zeros(0, dtype=np.int64))  # a rank without rows ...
    get_batch(tokens, 6, 8, whole_rng)
    assert empty.shape == (0, 8) and part_rng.integers(1 << 30) == whole_rng.integers(1 << 30)  # ... keeps in step


def test_one_process_needs_no_mpi():
    """A plain `python` run never imports mpi4py: a world of one, every core to threads."""
    code = ("import sys; from minigpt.distributed import communicator; c = communicator('cpu'); "
            "print(c.world_size, 'mpi4py' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.stdout.split() == ["1", "False"], out.stderr


@needs_mpi
def test_collectives_and_summed_gradients_equal_one_process():
    result = mpiexec(REPO / "tests" / "mpi_checks.py", "collectives")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("ok") == 2  # one per rank (their lines may interleave)


@needs_mpi
def test_zero1_on_two_ranks_equals_adamw_in_one_process():
    result = mpiexec(REPO / "tests" / "mpi_checks.py", "zero")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("ok") == 2


@needs_mpi
def test_an_error_on_one_rank_ends_the_job_with_one_line():
    start = time.time()
    result = mpiexec(REPO / "tests" / "mpi_checks.py", "crash")
    assert result.returncode != 0 and time.time() - start < 60
    assert result.stderr.strip() == "error on rank 1: RuntimeError: boom"


@needs_mpi
def test_a_bad_option_is_one_line_from_rank_0(tmp_path):
    result = mpiexec(REPO / "scripts" / "train.py", "--n_embd", "30", "--out_dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --n_embd 30 is not divisible")
    assert result.stderr.strip().count("\n") == 0


@needs_mpi
def test_two_ranks_log_the_losses_of_one(tmp_path, corpus):
    common = [*TINY, "--data", corpus, "--max_iters", 4, "--eval_interval", 2]
    result = mpiexec(REPO / "scripts" / "train.py", *common, "--out_dir", tmp_path / "two")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("done: 4 iterations") == 1 and result.stdout.count("sample: ") == 3  # rank 0 only
    main([*map(str, common), "--out_dir", str(tmp_path / "one"), "--workers", "1"])
    assert_close(train_losses(tmp_path / "two"), train_losses(tmp_path / "one"), rel=1e-10)
    assert load_trainer_state(tmp_path / "two" / "latest")["iter"] == 4


@needs_mpi
def test_an_interrupted_two_rank_run_resumes_exactly_on_two_ranks_and_on_one(tmp_path, corpus):
    common = [*TINY, "--data", corpus, "--eval_interval", 1000, "--lr_decay_iters", 50]
    out = tmp_path / "split"
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, str(REPO / "scripts" / "train.py"),
                             *map(str, common), "--max_iters", "100000", "--out_dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log, deadline = out / "log.jsonl", time.time() + 60
        while time.time() < deadline and (not log.exists() or log.read_text().count("\n") < 4):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # mpiexec passes Ctrl-C on to every rank
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stdout.count("interrupted: saved") == 1
    stopped = load_trainer_state(out / "latest")["iter"]
    total = stopped + 3
    shutil.copytree(out, tmp_path / "on_one")
    result = mpiexec(REPO / "scripts" / "train.py", "--init_from", "resume", "--max_iters", total, "--out_dir", out)
    assert result.returncode == 0, result.stderr
    main(["--init_from", "resume", "--max_iters", str(total), "--out_dir", str(tmp_path / "on_one"), "--workers", "1"])
    # the reference: one uninterrupted run, on one process with the same two slices per step (2 threads)
    main([*map(str, common), "--max_iters", str(total), "--out_dir", str(tmp_path / "straight"), "--workers", "2"])
    straight = train_losses(tmp_path / "straight")
    assert_close(train_losses(out), straight, rel=1e-13)  # exact but for the order of a sum of two
    assert_close(train_losses(tmp_path / "on_one"), straight, rel=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device (none on the CI machine)")
def test_nccl_world_of_one():
    """One GPU makes a world of one: NCCL's collectives with the unique id handed over as with MPI."""
    import cupy

    from minigpt.distributed import NCCLCommunicator, SingleProcess

    comm = NCCLCommunicator(SingleProcess())
    buf = cupy.arange(6, dtype=cupy.float32)
    comm.all_reduce(buf)
    np.testing.assert_array_equal(buf.get(), np.arange(6))
    out = cupy.empty(6, dtype=cupy.float64)
    comm.all_gather(cupy.arange(6, dtype=cupy.float64), out)
    shard = cupy.empty(6, dtype=cupy.float64)
    comm.reduce_scatter(out, shard)
    np.testing.assert_array_equal(shard.get(), np.arange(6))
