"""scripts/train.py and the trainer: options, the log, checkpoints, exact resume, Ctrl-C, divergence."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minigpt.checkpoint import is_checkpoint, load_trainer_state
from minigpt.config import TrainConfig, parse_args
from minigpt.errors import MinigptError, run_cli
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
    return {r["iter"]: r["train_loss"] for r in records if "train_loss" in r}


TIMING = ("tokens_per_sec", "elapsed_s")


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


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
        (["--init_from", "/no/such/dir"], "does not exist"),
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
    assert [r["iter"] for r in records] == list(range(7))  # one record per iteration, evaluations included
    steps = [r for r in records if "train_loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert [r["iter"] for r in steps] == list(range(6))
    assert [r["iter"] for r in evals] == [0, 3, 6]
    for r in steps:
        assert set(r) >= {"iter", "lr", "train_loss", "grad_norm", "tokens_per_sec", "elapsed_s"}
        assert r["tokens_per_sec"] > 0 and r["grad_norm"] > 0
    for r in evals:  # the evaluation's two estimates, named apart from the step's batch loss
        assert {"val_loss", "train_loss_eval", "lr", "elapsed_s"} <= set(r)
    assert "train_loss" not in records[6]  # the final evaluation has no training step after it
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
        while time.time() < deadline and (not log.exists() or log.read_text().count("\n") < 4):  # iterations 0 to 3
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


def test_help_describes_every_option_with_its_default():
    from minigpt.config import build_parser

    result = run_script("--help")
    assert result.returncode == 0, result.stderr
    shown = " ".join(result.stdout.split())  # argparse wraps the lines
    helps = {action.dest: action.help.replace("%%", "%") for action in build_parser()._actions}
    for name, default in TrainConfig().to_dict().items():
        description, _, rest = helps[name].rpartition(" (default: ")
        assert rest == f"{default})", name
        assert len(description.split()) >= 2, f"--{name} has no description"
        assert f"--{name} " in shown and " ".join(helps[name].split()) in shown, name


def test_init_from_a_training_out_dir_uses_its_best_checkpoint(tmp_path, corpus):
    run_main(*TINY, "--data", corpus, "--max_iters", 3, "--eval_interval", 3, "--out_dir", tmp_path / "base")
    run_main(*TINY, "--data", corpus, "--max_iters", 0, "--init_from", tmp_path / "base", "--out_dir", tmp_path / "tuned")
    base, tuned = GPT.from_pretrained(tmp_path / "base" / "best"), GPT.from_pretrained(tmp_path / "tuned" / "latest")
    for name in base.params:
        np.testing.assert_array_equal(tuned.params[name], base.params[name])


# -- the log across interruptions (issue 11.2) -------------------------------------------


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs, no handler sees it."""


def kill_at(monkeypatch, iteration):
    """Make train_step die as it starts `iteration`, as a kill -9 at that moment would."""
    real_step = Trainer.train_step

    def step(self, it):
        if it == iteration:
            raise Killed
        return real_step(self, it)

    monkeypatch.setattr(Trainer, "train_step", step)


LOG_RUN = [*TINY, "--eval_interval", 3, "--max_iters", 10, "--lr_decay_iters", 10, "--dropout", 0.1]


@pytest.mark.parametrize("killed_at, torn_line", [
    (6, False),  # right after the checkpoint at 6, before the record of iteration 6 (which holds that evaluation)
    (8, True),   # two records past the checkpoint, and a record cut short mid-write
])
def test_a_killed_run_resumes_to_the_log_of_an_uninterrupted_one(tmp_path, corpus, monkeypatch, killed_at, torn_line):
    run_main(*LOG_RUN, "--data", corpus, "--out_dir", tmp_path / "straight")
    out = tmp_path / "killed"
    with monkeypatch.context() as m:
        kill_at(m, killed_at)
        with pytest.raises(Killed):
            run_main(*LOG_RUN, "--data", corpus, "--out_dir", out)
    assert load_trainer_state(out / "latest")["iter"] == 6
    if torn_line:
        with open(out / "log.jsonl", "a") as f:
            f.write('{"iter": 8, "lr": 0.0')
    assert run_main("--init_from", "resume", "--out_dir", out) == 0
    assert without_timing(read_log(out)) == without_timing(read_log(tmp_path / "straight"))


def test_a_run_killed_by_sigkill_resumes_to_the_same_log(tmp_path, corpus):
    argv = [*map(str, TINY), "--data", str(corpus), "--max_iters", "80", "--eval_interval", "7", "--sample_tokens", "0"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *argv, "--out_dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (not (out / "log.jsonl").exists()
                                          or (out / "log.jsonl").read_text().count("\n") < 10):
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL  # it was killed, not finished
    assert run_main("--init_from", "resume", "--out_dir", out) == 0
    assert run_main(*argv, "--out_dir", tmp_path / "straight") == 0  # in this process: the same code, the same numbers
    assert without_timing(read_log(out)) == without_timing(read_log(tmp_path / "straight"))


def test_raising_max_iters_of_a_finished_run_keeps_its_last_evaluation(tmp_path, corpus):
    common = [*TINY, "--data", corpus, "--eval_interval", 2, "--lr_decay_iters", 6]
    run_main(*common, "--max_iters", 6, "--out_dir", tmp_path / "straight")
    run_main(*common, "--max_iters", 4, "--out_dir", tmp_path / "split")
    finished = {r["iter"]: r for r in read_log(tmp_path / "split")}
    run_main("--init_from", "resume", "--max_iters", 6, "--out_dir", tmp_path / "split")
    resumed = {r["iter"]: r for r in read_log(tmp_path / "split")}
    assert resumed[4]["val_loss"] == finished[4]["val_loss"]  # iteration 4's evaluation is still in the log
    assert resumed[4]["train_loss_eval"] == finished[4]["train_loss_eval"] and "train_loss" in resumed[4]
    assert without_timing(read_log(tmp_path / "split")) == without_timing(read_log(tmp_path / "straight"))


# -- resuming: the schedule, a finished run (issue 11.5) -----------------------------------


def test_raising_max_iters_keeps_the_saved_learning_rate_schedule(tmp_path, corpus, capsys):
    out = tmp_path / "out"
    run_main(*TINY, "--data", corpus, "--max_iters", 6, "--eval_interval", 3, "--out_dir", out)
    first = {r["iter"]: r["lr"] for r in read_log(out)}
    min_lr = TrainConfig().min_lr
    assert first[5] > min_lr  # still decaying towards iteration 6
    capsys.readouterr()
    run_main("--init_from", "resume", "--max_iters", 9, "--out_dir", out)
    printed = capsys.readouterr().out
    lrs = {r["iter"]: r["lr"] for r in read_log(out)}
    assert {i: lrs[i] for i in first} == first
    assert [lrs[i] for i in (6, 7, 8)] == [min_lr] * 3  # the decay ended at 6 and holds min_lr; no restart
    assert "resuming" in printed and "at iteration 6 (--lr_decay_iters), then --min_lr until 9" in printed
    assert load_trainer_state(out / "latest")["options"]["lr_decay_iters"] == 6


def test_the_schedule_said_on_resume_includes_a_warmup_that_outlasts_the_decay(tmp_path, corpus, capsys):
    """The first run stops inside the warmup (--warmup_iters 100 > --max_iters 6): the rate keeps rising."""
    out = tmp_path / "out"
    run_main(*TINY, "--data", corpus, "--max_iters", 6, "--eval_interval", 3, "--warmup_iters", 100, "--out_dir", out)
    capsys.readouterr()
    run_main("--init_from", "resume", "--max_iters", 9, "--out_dir", out)
    printed = capsys.readouterr().out
    assert "warming up to --learning_rate 0.001 until iteration 100 (--warmup_iters)" in printed
    lrs = {r["iter"]: r["lr"] for r in read_log(out)}
    assert lrs[6] < lrs[7] < lrs[8]  # what was said: still warming up


def test_an_explicit_lr_decay_iters_on_resume_changes_the_schedule(tmp_path, corpus):
    out = tmp_path / "out"
    run_main(*TINY, "--data", corpus, "--max_iters", 6, "--eval_interval", 3, "--out_dir", out)
    run_main("--init_from", "resume", "--max_iters", 9, "--lr_decay_iters", 12, "--out_dir", out)
    from minigpt.optim import cosine_lr

    cfg = TrainConfig()
    lrs = {r["iter"]: r["lr"] for r in read_log(out)}
    assert lrs[7] == cosine_lr(7, cfg.learning_rate, cfg.min_lr, 2, 12) > cfg.min_lr


def test_resuming_a_finished_run_says_so_and_how_to_continue(tmp_path, corpus, capsys):
    out = tmp_path / "out"
    run_main(*TINY, "--data", corpus, "--max_iters", 3, "--eval_interval", 3, "--out_dir", out)
    log_before = (out / "log.jsonl").read_bytes()
    capsys.readouterr()
    assert run_main("--init_from", "resume", "--out_dir", out) == 0
    printed = capsys.readouterr().out
    assert "already at iteration 3 (--max_iters 3)" in printed and "raise it" in printed and "--max_iters N" in printed
    assert "done" not in printed
    assert (out / "log.jsonl").read_bytes() == log_before


# -- a second run into the same out_dir (issue 11.4) --------------------------------------


def snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("init", [[], ["--init_from", "base"]])
def test_a_new_run_refuses_to_replace_an_earlier_one(tmp_path, corpus, init):
    run_main(*TINY, "--data", corpus, "--max_iters", 2, "--eval_interval", 2, "--out_dir", tmp_path / "base")
    out = tmp_path / "out"
    run_main(*TINY, "--data", corpus, "--max_iters", 2, "--eval_interval", 2, "--out_dir", out)
    before = snapshot(out)
    init = [str(tmp_path / "base" / "latest") if a == "base" else a for a in init]
    with pytest.raises(MinigptError, match=r"already holds a run \(latest, best, log.jsonl\); continue it with "
                                           r"--init_from resume, choose another --out_dir, or pass --overwrite"):
        run_main(*TINY, *init, "--data", corpus, "--max_iters", 2, "--out_dir", out)
    assert snapshot(out) == before


def test_overwrite_replaces_the_earlier_run(tmp_path, corpus):
    out = tmp_path / "out"
    run_main(*TINY, "--data", corpus, "--max_iters", 4, "--eval_interval", 2, "--out_dir", out)
    assert run_main(*TINY, "--data", corpus, "--max_iters", 1, "--eval_interval", 1, "--out_dir", out,
                    "--overwrite") == 0
    assert [r["iter"] for r in read_log(out)] == [0, 1]  # a new history, not the old one's continuation
    assert load_trainer_state(out / "latest")["iter"] == 1


def test_overwrite_is_a_flag_or_takes_a_value():
    assert parse_args(["--overwrite"])[0].overwrite is True
    assert parse_args(["--overwrite", "false"])[0].overwrite is False
    assert parse_args(["--overwrite=true", "--max_iters", "3"])[0].overwrite is True
    assert parse_args([])[0].overwrite is False


# -- out_dir problems are one line (issue 11.3) -------------------------------------------


def out_dir_cases(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    return {"a file": (a_file, "is a file"),
            "under a file": (a_file / "out", "lies under .*a_file, which is a file"),
            "a parent that cannot be made": (Path("/proc/minigpt-no-such-dir/out"), "cannot write to --out_dir")}


@pytest.mark.parametrize("case", ["a file", "under a file", "a parent that cannot be made"])
def test_a_bad_out_dir_is_one_line_before_any_work(tmp_path, corpus, data_dir, case):
    out, message = out_dir_cases(tmp_path)[case]
    if case == "a parent that cannot be made" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc, where no directory can be made")
    result = run_script(*TINY, "--data", corpus, "--max_iters", 2, "--out_dir", out,
                        env_extra={"MINIGPT_DATA_DIR": str(data_dir)})
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0, result.stderr
    assert re.search(message, result.stderr)
    assert not data_dir.exists()  # checked before the data was prepared


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_out_dir_is_one_line(tmp_path, corpus):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(MinigptError, match="cannot write to --out_dir .*choose a writable --out_dir"):
            run_main(*TINY, "--data", corpus, "--max_iters", 2, "--out_dir", parent / "out")
    finally:
        parent.chmod(0o755)


def test_a_read_only_file_system_is_one_line(tmp_path, corpus, monkeypatch, data_dir):
    """Root writes into a 0o555 directory, so a read-only file system is simulated where the probe writes."""
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(MinigptError, match=r"cannot write to --out_dir .* \(Read-only file system\); choose a writable"):
        run_main(*TINY, "--data", corpus, "--max_iters", 2, "--out_dir", tmp_path / "out")
    assert not data_dir.exists()


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["checkpoint", "log"])
def test_a_full_disk_is_one_line_and_keeps_the_checkpoints(tmp_path, corpus, monkeypatch, capsys, where):
    import minigpt.checkpoint
    import minigpt.trainer

    out = tmp_path / "out"
    if where == "checkpoint":  # the saves at iteration 0 (latest and best) succeed, the one at 3 finds the disk full
        real_save, calls = minigpt.checkpoint.write_safetensors, []

        def write_safetensors(*args, **kwargs):
            calls.append(1)
            return disk_full() if len(calls) > 2 else real_save(*args, **kwargs)

        monkeypatch.setattr(minigpt.checkpoint, "write_safetensors", write_safetensors)
        what = out / "latest"
    else:  # the log's third record finds the disk full
        real_write = minigpt.trainer.RunLog.write
        monkeypatch.setattr(minigpt.trainer.RunLog, "write",
                            lambda self, r: disk_full() if r["iter"] == 2 else real_write(self, r))
        what = out / "log.jsonl"
    argv = [*TINY, "--data", corpus, "--max_iters", 6, "--eval_interval", 3, "--out_dir", out]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: could not write {what} (No space left on device); ")
    assert f"{out / 'latest'} and {out / 'best'} keep their last complete version" in err
    assert "continue with --init_from resume" in err
    for name in ("latest", "best"):
        assert is_checkpoint(out / name) and load_trainer_state(out / name)["iter"] == 0
    assert sorted(p.name for p in out.iterdir()) == [".lock", "best", "latest", "log.jsonl"]  # no temporary leftovers (.lock: minigpt.lock)


# -- loss.png without matplotlib (issue 11.8) ---------------------------------------------


def test_a_missing_matplotlib_is_one_note_per_run(tmp_path, corpus, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out = tmp_path / "out"
    run_main(*TINY, "--data", corpus, "--max_iters", 4, "--eval_interval", 1, "--out_dir", out)
    printed = capsys.readouterr().out
    assert printed.count("no loss.png (matplotlib is not installed; pip install -e '.[plot]'") == 1
    assert len(re.findall(r"iter \d: train loss", printed)) == 5  # five evaluations, one note
    assert not (out / "loss.png").exists()


# -- data flows one way (issue 21) ------------------------------------------------------------


def test_the_trainer_hands_the_steps_tokens_down_as_arrays(tmp_path, corpus, monkeypatch):
    """train_step draws the step's (A, B, T) batch itself and hands it to forward_backward, with the
    optimizer's flat gradient buffer as the place the gradients go: no read callback."""
    from minigpt.data import get_batch

    argv = [*TINY, "--data", corpus, "--batch_size", 2, "--gradient_accumulation_steps", 3, "--out_dir", tmp_path / "o"]
    trainer = Trainer(resolve_config([str(a) for a in argv]))
    seen, real = [], trainer.parallel.forward_backward
    monkeypatch.setattr(trainer.parallel, "forward_backward", lambda X, Y, **kw: seen.append((X, Y, kw)) or real(X, Y, **kw))
    rng = np.random.default_rng()
    rng.bit_generator.state = trainer.sampler.rng.bit_generator.state  # --sampling random: get_batch from one generator
    trainer.train_step(0)
    (X, Y, kw), = seen
    want = [get_batch(trainer.data.train, 2, 16, rng) for _ in range(3)]
    assert isinstance(X, np.ndarray) and X.shape == Y.shape == (3, 2, 16)
    np.testing.assert_array_equal(X, np.stack([x for x, _ in want]))
    np.testing.assert_array_equal(Y, np.stack([y for _, y in want]))
    assert kw["into"] is trainer.optimizer.grad_views
