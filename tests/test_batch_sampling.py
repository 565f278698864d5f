"""--sampling random (today's batches) and shuffle (without replacement), through shards, with exact resume."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from minigpt.data import get_batch
from minigpt.errors import MinigptError
from minigpt.preparation import prepare_shards
from minigpt.batch_sampling import RandomSampler, ShuffleSampler
from minigpt.shards import TokenShards
from minigpt.trainer import main
from tests.test_distributed import mpiexec, needs_mpi

FIXTURES = Path(__file__).parent / "fixtures"
TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16", "--batch_size", "4",
        "--eval_iters", "2", "--log_interval", "1", "--sample_tokens", "0", "--warmup_iters", "2", "--workers", "1"]
TEXT = "".join(f"{i} little pigs went to market on day {i % 7}; {i * i} coins were spent.\n" for i in range(300))


def read_log(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]


def train(*argv):
    assert main([str(a) for a in argv]) == 0


def test_random_sampler_draws_what_get_batch_draws():
    tokens = np.arange(500)
    sampler, rng = RandomSampler(tokens, 4, 8, seed=3), np.random.default_rng(3)
    for _ in range(5):
        x, y = sampler.batch(np.arange(1, 3))
        ex, ey = get_batch(tokens, 4, 8, rng, np.arange(1, 3))
        assert np.array_equal(x, ex) and np.array_equal(y, ey)
    assert sampler.epochs == pytest.approx(5 * 4 * 8 / 500)


def test_random_sampling_gives_the_losses_of_a_run_before_sampling_existed(tmp_path):
    """tests/fixtures/random_sampling_log.jsonl: scripts/train.py at commit c7f5b26 (before this module), run with
    --n_layer 2 --n_head 2 --n_embd 32 --block_size 32 --batch_size 4 --gradient_accumulation_steps 2
    --max_iters 20 --eval_interval 10 --eval_iters 2 --log_interval 1 --sample_tokens 0 --workers 1 (pydoc text)."""
    train("--n_layer", 2, "--n_head", 2, "--n_embd", 32, "--block_size", 32, "--batch_size", 4,
          "--gradient_accumulation_steps", 2, "--max_iters", 20, "--eval_interval", 10, "--eval_iters", 2,
          "--log_interval", 1, "--sample_tokens", 0, "--workers", 1, "--out_dir", tmp_path / "run")
    before = [json.loads(line) for line in (FIXTURES / "random_sampling_log.jsonl").read_text().splitlines()]
    now = read_log(tmp_path / "run")
    assert [r["iter"] for r in now] == [r["iter"] for r in before]
    for old, new in zip(before, now):
        for key in ("train_loss", "grad_norm", "val_loss"):
            if key in old:
                assert new[key] == pytest.approx(old[key], rel=1e-5, abs=1e-6), (old["iter"], key)


def test_shuffle_reads_every_window_once_per_epoch():
    tokens = TokenShards([np.arange(0, 41), np.arange(1000, 1026)])  # 10 + 6 windows of T = 4
    sampler = ShuffleSampler(tokens, batch_size=3, block_size=4, seed=7)
    assert sampler.n_windows == 16
    starts = [x[:, 0].tolist() for x, _ in (sampler.batch() for _ in range(16))]  # 48 windows = 3 epochs
    flat = sum(starts, [])
    expected = sorted(list(range(0, 40, 4)) + list(range(1000, 1024, 4)))
    epochs = [sorted(flat[i:i + 16]) for i in range(0, 48, 16)]
    assert epochs == [expected] * 3
    assert flat[:16] != flat[16:32]  # each epoch its own permutation
    assert sampler.epochs == 3.0
    x, y = ShuffleSampler(tokens, 3, 4, seed=7).batch()
    assert np.array_equal(x[:, 1:], y[:, :-1]) and x[:, 0].tolist() == starts[0]


def test_shuffle_rows_split_the_batch_disjointly_and_the_state_resumes_exactly():
    tokens = np.arange(1000)
    whole = ShuffleSampler(tokens, 6, 5, seed=1)
    batches = [whole.batch()[0] for _ in range(40)]
    first, second = ShuffleSampler(tokens, 6, 5, seed=1), ShuffleSampler(tokens, 6, 5, seed=1)
    for batch in batches[:25]:  # two "ranks", each reading half the rows of the same global batch
        a, b = first.batch(np.arange(0, 3))[0], second.batch(np.arange(3, 6))[0]
        assert np.array_equal(np.concatenate([a, b]), batch)
    resumed = ShuffleSampler(tokens, 6, 5, seed=1)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for batch in batches[25:]:
        assert np.array_equal(resumed.batch()[0], batch)
    with pytest.raises(MinigptError, match="windows"):
        ShuffleSampler(tokens, 6, 7, seed=1).load_state_dict(first.state_dict())
    with pytest.raises(MinigptError, match="--sampling random"):
        ShuffleSampler(tokens, 6, 5, seed=1).load_state_dict(RandomSampler(tokens, 6, 5, 1).state_dict())


@pytest.fixture
def shards(tmp_path):
    (tmp_path / "pigs.txt").write_text(TEXT)
    out, _ = prepare_shards(tmp_path / "pigs.txt", "char", out=tmp_path / "shards", num_proc=1,
                            shard_tokens=5000, val_tokens=2000, progress=False)
    return out


def test_shuffle_through_shards_resumes_exactly_and_counts_epochs(tmp_path, shards):
    common = [*TINY, "--data", shards, "--sampling", "shuffle", "--eval_interval", 5, "--batch_size", 32,
              "--gradient_accumulation_steps", 2, "--lr_decay_iters", 30]
    train(*common, "--max_iters", 24, "--out_dir", tmp_path / "whole")
    train(*common, "--max_iters", 10, "--out_dir", tmp_path / "part")
    train(*common, "--max_iters", 24, "--out_dir", tmp_path / "part", "--init_from", "resume")
    whole, part = read_log(tmp_path / "whole"), read_log(tmp_path / "part")
    assert [r.get("train_loss") for r in whole] == [r.get("train_loss") for r in part] and len(whole) == 25
    epochs = [r["epoch"] for r in whole if "epoch" in r]
    windows = (21_000 - 2000 - 1) // 16  # the pigs text is ~21k characters; 2,000 are validation
    assert epochs == sorted(epochs) and epochs[-1] > 1  # more than an epoch: 24 steps of 64 windows
    assert abs(epochs[0] - 64 / windows) < 0.01
    # another split of each step over the workers reads the same windows: the same losses up to rounding
    train(*common, "--max_iters", 30, "--out_dir", tmp_path / "part", "--init_from", "resume", "--workers", 2)
    train(*common, "--max_iters", 30, "--out_dir", tmp_path / "whole", "--init_from", "resume")
    late = [(r["iter"], r["train_loss"]) for r in read_log(tmp_path / "whole") if r["iter"] >= 24 and "train_loss" in r]
    late_2 = [(r["iter"], r["train_loss"]) for r in read_log(tmp_path / "part") if r["iter"] >= 24 and "train_loss" in r]
    assert [i for i, _ in late] == [i for i, _ in late_2]
    np.testing.assert_allclose([v for _, v in late], [v for _, v in late_2], rtol=1e-5)


def test_bad_sampling_options_are_one_line_errors(tmp_path):
    from minigpt.config import parse_args

    with pytest.raises(MinigptError, match="--sampling must be one of random, shuffle"):
        parse_args(["--sampling", "sequential"])
    with pytest.raises(MinigptError, match="TASK=PATH"):
        parse_args(["--eval_tasks", "mmlu=x.jsonl"])
    with pytest.raises(MinigptError, match="--skip_spikes"):
        parse_args(["--skip_spikes", "-1"])


@needs_mpi
def test_shuffle_over_two_ranks_reads_what_one_process_reads_and_resumes_on_one(tmp_path, shards):
    common = [*TINY, "--data", shards, "--sampling", "shuffle", "--eval_interval", 3, "--batch_size", 8,
              "--lr_decay_iters", 20]
    two = mpiexec(Path(__file__).resolve().parents[1] / "scripts" / "train.py", *common, "--max_iters", 6,
                  "--out_dir", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    shutil.copytree(tmp_path / "two", tmp_path / "on_one")
    train("--init_from", "resume", "--max_iters", 10, "--out_dir", tmp_path / "on_one", "--workers", 1)
    train(*common, "--max_iters", 10, "--out_dir", tmp_path / "straight", "--workers", 2)  # the same two slices a step
    losses = {name: {r["iter"]: r["train_loss"] for r in read_log(tmp_path / name) if "train_loss" in r}
              for name in ("two", "on_one", "straight")}
    assert list(losses["two"]) == list(range(6)) and list(losses["on_one"]) == list(range(10))
    np.testing.assert_allclose([losses["two"][i] for i in range(6)], [losses["straight"][i] for i in range(6)],
                               rtol=1e-12)
    np.testing.assert_allclose(list(losses["on_one"].values()), list(losses["straight"].values()), rtol=1e-6)
