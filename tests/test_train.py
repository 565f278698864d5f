"""scripts/train.py and the trainer: options, the log, checkpoints, exact resume, Ctrl-C, divergence."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minigpt.checkpoint import is_checkpoint, load_trainer_state
from minigpt.config import TrainConfig, parse_args
from minigpt.errors import MinigptError
from minigpt.model import GPT
from minigpt.trainer import Trainer, TrainingDiverged, main, resolve_config

REPO = Path(__file__).resolve().parent.parent
TEXT = "".join(f"{i} little pigs went to market on day {i % 7}; {i * i} coins were spent.\n" for i in range(300))
TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16", "--batch_size", "4",
        "--eval_iters", "2", "--log_interval", "1", "--sample_tokens", "8", "--warmup_iters", "2"]



@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "pigs.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def run_main(*argv):
    return main([str(a) for a in argv])


def read_log(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]


def train_losses(records):
    return {r["iter"]: r["train_loss"] for r in records if "val_loss" not in r}


def run_script(*argv, env_extra=None, **kwargs):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *map(str, argv)],
                          capture_output=True, text=True, env=env, **kwargs)


# -- options ----------------------------------------------------------------------------


def test_options_accept_both_spellings_and_a_toml_file(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('max_iters = 50\nlearning-rate = 3e-4\ndecay_lr = false\ndataset = "shakespeare"\n')
    cfg, explicit = parse_args(["--config", str(toml), "--max-iters=7", "--batch_size", "3", "--n-embd", "64"])
    assert (cfg.max_iters, cfg.learning_rate, cfg.decay_lr, cfg.batch_size, cfg.n_embd) == (7, 3e-4, False, 3, 64)
    assert cfg.dataset == "shakespeare" and cfg.n_layer == TrainConfig().n_layer
    assert set(explicit) == {"max_iters", "learning_rate", "decay_lr", "dataset", "batch_size", "n_embd"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max_iter", "5"], "unrecognized arguments"),
        (["--max_iters", "five"], "--max_iters expects an integer"),
        (["--n_embd", "30", "--n_head", "4"], "not divisible"),
        (["--max_iters", "-1"], "--max_iters must be 0 or more"),
        (["--dropout", "1.5"], "--dropout must be in"),
        (["--decay_lr", "maybe"], "--decay_lr expects true or false"),
        (["--tokenizer", "bpe:x"], "bpe:1024"),
        (["--init_from", "/no/such/dir"], "neither scratch"),
        (["--device", "tpu"], "--device must be one of"),
        (["--workers", "-2"], "--workers must be 0 or more"),
    ],
)
def test_bad_options_are_one_line_errors(argv, message):
    with pytest.raises(MinigptError, match=message):
        parse_args(argv)


def test_bad_toml_key_is_an_error(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("max_iters = 5\nlearning_rat = 1e-3\n")
    with pytest.raises(MinigptError, match="unknown option 'learning_rat'"):
        parse_args(["--config", str(toml)])
    toml.write_text("max_iters = 5.5\n")
    with pytest.raises(MinigptError, match="max_iters expects an integer"):
        parse_args(["--config", str(toml)])


def test_script_error_is_one_line_and_no_work(tmp_path):
    out = tmp_path / "out"
    result = run_script("--n_embd", "30", "--out_dir", out)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr and not out.exists()


def test_script_trains_on_the_default_offline_corpus(tmp_path, data_dir):
    """`python scripts/train.py` needs no network: the default corpus ships with Python."""
    out = tmp_path / "out"
    result = run_script(*TINY, "--max_iters", 2, "--eval_interval", 2, "--out_dir", out,
                        env_extra={"MINIGPT_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    assert "iter 2: train loss" in result.stdout and "sample: " in result.stdout
    assert (data_dir / "pydoc_char" / "meta.json").is_file()
    assert is_checkpoint(out / "latest")


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(MinigptError, match="found no checkpoint"):
        resolve_config(["--init_from", "resume", "--out_dir", str(tmp_path / "empty")])


def test_block_size_beyond_the_data_is_an_error(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("to be or not to be, that is the question\n" * 3, encoding="utf-8")
    with pytest.raises(MinigptError, match="fewer than block_size"):
        run_main(*TINY, "--data", small, "--block_size", "16", "--out_dir", tmp_path / "out", "--max_iters", "1")


# -- a run -----------------------------------------------------------------------------


def test_train_writes_log_and_checkpoints(tmp_path, corpus):
    out = tmp_path / "out"
    assert run_main(*TINY, "--data", corpus, "--max_iters", 6, "--eval_interval", 3, "--out_dir", out) == 0
    records = read_log(out)
    steps = [r for r in records if "val_loss" not in r]
    evals = [r for r in records if "val_loss" in r]
    assert [r["iter"] for r in steps] == list(range(6))
    assert [r["iter"] for r in evals] == [0, 3, 6]
    for r in records:
        assert {"iter", "train_loss", "lr", "tokens_per_sec", "elapsed_s"} <= set(r)
    assert all(r["tokens_per_sec"] > 0 for r in steps)
    assert [r["elapsed_s"] for r in records] == sorted(r["elapsed_s"] for r in records)
    assert is_checkpoint(out / "latest") and is_checkpoint(out / "best")
    state = load_trainer_state(out / "latest")
    assert state["iter"] == 6 and state["options"]["max_iters"] == 6
    assert state["best_val_loss"] == min(r["val_loss"] for r in evals)
    assert load_trainer_state(out / "best")["iter"] == min(evals, key=lambda r: r["val_loss"])["iter"]


def test_training_lowers_the_loss(tmp_path, corpus):
    out = tmp_path / "out"
    run_main(*TINY, "--data", corpus, "--max_iters", 60, "--eval_interval", 60, "--learning_rate", 1e-2,
             "--sample_tokens", 0, "--out_dir", out)
    evals = [r for r in read_log(out) if "val_loss" in r]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5


def test_resume_continues_exactly(tmp_path, corpus):
    """N iterations, then resume for N more == 2N in one run (with dropout, so its RNG must be restored)."""
    common = [*TINY, "--data", corpus, "--dropout", 0.1, "--eval_interval", 3, "--gradient_accumulation_steps", 2,
              "--workers", 2,  # the batch split over two threads, each with its own seeded dropout
              "--lr_decay_iters", 10]  # the same schedule in both (by default it decays until max_iters)
    run_main(*common, "--max_iters", 10, "--out_dir", tmp_path / "straight")
    run_main(*common, "--max_iters", 5, "--out_dir", tmp_path / "split")
    run_main("--init_from", "resume", "--max_iters", 10, "--out_dir", tmp_path / "split")
    straight, split = read_log(tmp_path / "straight"), read_log(tmp_path / "split")
    assert sorted(train_losses(split)) == list(range(10))
    assert train_losses(split) == train_losses(straight)  # exact equality, not approximate
    a, b = GPT.from_pretrained(tmp_path / "straight" / "latest"), GPT.from_pretrained(tmp_path / "split" / "latest")
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])


def test_gradient_accumulation_equals_one_big_batch(tmp_path, corpus, monkeypatch):
    """2 micro-batches of 2 sequences give the same update as 1 batch of the same 4 sequences."""
    import minigpt.trainer as trainer_module

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 20, size=(4, 17))
    updated = []
    for accumulate, batch_size in ((1, 4), (2, 2)):
        chunks = iter(np.split(tokens, 4 // batch_size))

        def fixed_batch(_tokens, _batch_size, _block_size, _rng, rows=slice(None)):
            chunk = next(chunks)[rows]
            return chunk[:, :-1], chunk[:, 1:]

        monkeypatch.setattr(trainer_module, "get_batch", fixed_batch)
        argv = [*TINY, "--data", corpus, "--dtype", "float64", "--batch_size", batch_size,
                "--gradient_accumulation_steps", accumulate, "--out_dir", tmp_path / f"out{accumulate}"]
        trainer = Trainer(resolve_config([str(a) for a in argv]))
        trainer.train_step(0)
        updated.append({k: v.copy() for k, v in trainer.model.params.items()})
    for name in updated[0]:
        np.testing.assert_allclose(updated[1][name], updated[0][name], rtol=1e-12, atol=1e-14)


def test_fine_tune_from_a_directory_starts_from_its_weights(tmp_path, corpus):
    run_main(*TINY, "--data", corpus, "--max_iters", 3, "--eval_interval", 3, "--out_dir", tmp_path / "base")
    run_main(*TINY, "--data", corpus, "--max_iters", 0, "--init_from", tmp_path / "base" / "latest",
             "--out_dir", tmp_path / "tuned")
    base, tuned = (GPT.from_pretrained(tmp_path / d / "latest") for d in ("base", "tuned"))
    for name in base.params:
        np.testing.assert_array_equal(tuned.params[name], base.params[name])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow is the point of this test
def test_divergence_stops_with_a_message_and_keeps_the_checkpoint(tmp_path, corpus):
    out = tmp_path / "out"
    with pytest.raises(TrainingDiverged, match="diverged at iteration .*last good checkpoint"):
        run_main(*TINY, "--data", corpus, "--max_iters", 50, "--eval_interval", 1000, "--learning_rate", 1e30,
                 "--warmup_iters", 0, "--grad_clip", 0, "--sample_tokens", 0, "--out_dir", out)
    assert load_trainer_state(out / "latest")["iter"] == 0  # the checkpoint written before training
    model = GPT.from_pretrained(out / "latest")
    assert all(np.isfinite(p).all() for p in model.params.values())


def test_ctrl_c_saves_latest_and_exits_cleanly(tmp_path, corpus):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), *map(str, TINY), "--data", str(corpus),
         "--max_iters", "100000", "--eval_interval", "100000", "--out_dir", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )
    try:
        deadline = time.time() + 60
        log = out / "log.jsonl"
        while time.time() < deadline and (not log.exists() or log.read_text().count("\n") < 4):  # eval + 3 steps
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted: saved" in stdout
    state = load_trainer_state(out / "latest")
    assert state["iter"] >= 3
    assert max(train_losses(read_log(out))) == state["iter"] - 1  # it stopped right after the saved iteration
