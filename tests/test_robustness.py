"""Issue 23: nothing lost, nothing mixed, nothing silent.

One run per out_dir (a real second process, a real kill -9), checkpoints that
verify themselves, state files checked against schemas, token data checked when
opened, memory checked before allocation, and the last tracebacks and
misleading lines of the adversarial pass and the newcomer's walk-through.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import minigpt.atomic
import minigpt.checkpoint
import minigpt.memory_plan
import minigpt.trainer
from minigpt import schema
from minigpt.checkpoint import load_trainer_state
from minigpt.checksums import CHECKSUM_FILE, ChecksumMismatch, write_checksums
from minigpt.errors import MinigptError, TokenIdError, run_cli
from minigpt.loading import load_checkpoint
from minigpt.model import GPT
from minigpt.model_config import GPTConfig
from minigpt.trainer import TrainingDiverged, main
from tests.test_train import TEXT, corpus, run_main  # noqa: F401 (corpus: a fixture)
from tests.test_train import TINY as TRAIN_TINY

REPO = Path(__file__).resolve().parent.parent
TINY = [*TRAIN_TINY[:TRAIN_TINY.index("--sample_tokens")], "--sample_tokens", "0", "--warmup_iters", "2"]  # no samples


def script(name, *argv, timeout=120, **kwargs):
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)}, **kwargs)


def one_line_error(proc, *fragments):
    """The process failed with exactly one `error:` line holding every fragment, and no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def run(tmp_path, corpus):
    """A finished tiny run: out/latest and out/best at iteration 2, and its log."""
    out = tmp_path / "out"
    run_main(*TINY, "--data", corpus, "--max_iters", 2, "--eval_interval", 2, "--out_dir", out)
    return out


# -- 1. one run per out_dir ------------------------------------------------------------------------------------


def wait_for(condition, timeout=90.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_a_second_run_and_a_resume_into_a_busy_out_dir_stop_and_a_killed_holder_blocks_nothing(tmp_path, corpus):
    out = tmp_path / "out"
    argv = [*TINY, "--data", corpus, "--eval_interval", 5, "--out_dir", out]
    first = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *map(str, argv), "--max_iters",
                              "1000000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_for(lambda: (out / "latest" / "trainer_state.json").is_file() and (out / ".lock").stat().st_size)
        holder = f"pid {first.pid} on "
        second = script("train.py", *argv, "--max_iters", 3, "--overwrite")
        one_line_error(second, f"--out_dir {out} is in use by another run ({holder}", "started ")
        resume = script("train.py", "--init_from", "resume", "--out_dir", out, "--max_iters", 3)
        one_line_error(resume, "is in use by another run", holder)
        records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()[:-1]]
        iters = [r["iter"] for r in records]
        assert iters == sorted(set(iters))  # one run's history: no iteration twice
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert "pid" in (out / ".lock").read_text()  # the killed run's line stays behind ...
    resumed = script("train.py", "--init_from", "resume", "--out_dir", out,
                     "--max_iters", load_trainer_state(out / "latest")["iter"] + 1)
    assert resumed.returncode == 0, resumed.stderr  # ... but blocks nothing: the OS released the lock
    assert (out / ".lock").read_text() == ""  # a run that ended normally leaves no holder


def test_the_lock_is_held_across_open_files_and_released_on_exit(tmp_path):
    from minigpt.lock import OutDirLock

    with OutDirLock(tmp_path):
        assert f"pid {os.getpid()} on " in (tmp_path / ".lock").read_text()
        with pytest.raises(MinigptError, match=rf"in use by another run \(pid {os.getpid()} on .*, started "):
            OutDirLock(tmp_path).acquire()  # flock: a second open file of the same process is refused too
    with OutDirLock(tmp_path):  # released
        pass


def test_a_write_that_fails_for_another_reason_than_space_is_not_told_to_free_space(tmp_path, corpus, monkeypatch,
                                                                                       capsys):
    def vanished(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(minigpt.checkpoint, "write_safetensors", vanished)
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        run_cli(main, [str(a) for a in (*TINY, "--data", corpus, "--max_iters", 2, "--out_dir", out)])
    err = capsys.readouterr().err
    assert "No such file or directory" in err and "free some space" not in err
    assert "removed files in" in err and "run the same command again" in err
    monkeypatch.undo()  # the advice works: the same command now runs (no --overwrite needed: no checkpoint)
    assert run_main(*TINY, "--data", corpus, "--max_iters", 2, "--out_dir", out) == 0


# -- 2. checkpoints verify themselves ---------------------------------------------------------------------------


def flip_a_mantissa_byte(path: Path) -> None:
    """Change the lowest mantissa byte of the first float32 in a safetensors file: still a finite number."""
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    offset = 8 + n  # the first tensor's first element, little-endian: its first byte is the lowest mantissa bits
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_weights_is_named_by_every_loader(run, corpus, capsys):
    weights = run / "latest" / "model.safetensors"
    flip_a_mantissa_byte(weights)
    from minigpt.weights import read_safetensors

    tensors = read_safetensors(weights)  # the byte is a finite number: the file alone cannot tell
    assert all(np.isfinite(t).all() for t in tensors.values())
    for load in (load_checkpoint, GPT.from_pretrained):
        with pytest.raises(ChecksumMismatch, match=f"{weights} does not match the sha256 recorded in"):
            load(run / "latest")
    one_line_error(script("generate.py", "--checkpoint", run / "latest", "--seed", 0, "--max-new-tokens", 2),
                   f"{weights} does not match")
    one_line_error(script("evaluate.py", "--checkpoint", run / "latest", "--data", corpus), f"{weights} does not match")
    with pytest.raises(ChecksumMismatch, match="model.safetensors does not match"):
        run_main("--init_from", "resume", "--out_dir", run, "--max_iters", 3)


def test_a_damaged_optimizer_file_stops_the_resume(run):
    flip_a_mantissa_byte(run / "latest" / "optimizer.safetensors")
    with pytest.raises(ChecksumMismatch, match="optimizer.safetensors does not match"):
        run_main("--init_from", "resume", "--out_dir", run, "--max_iters", 3)


def test_a_damaged_best_falls_back_to_latest_and_says_so(run, capsys):
    flip_a_mantissa_byte(run / "best" / "model.safetensors")
    _, _, directory = load_checkpoint(run)
    assert directory == run / "latest"
    err = capsys.readouterr().err
    assert f"note: {run / 'best' / 'model.safetensors'} does not match" in err and f"using {run / 'latest'} instead" in err


def test_the_checkpoint_keeps_hugging_faces_layout(run):
    names = {p.name for p in (run / "latest").iterdir()}
    assert {"config.json", "model.safetensors", CHECKSUM_FILE} <= names
    lines = (run / "latest" / CHECKSUM_FILE).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["model.safetensors", "optimizer.safetensors"]
    # sha256sum's own format: `sha256sum -c checksums.sha256` checks it by hand
    proc = subprocess.run(["sha256sum", "-c", CHECKSUM_FILE], cwd=run / "latest", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- 3. state files against schemas -----------------------------------------------------------------------------


def edit_json(path: Path, **fields):
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("fields, message", [
    ({"iter": "abc"}, '"iter" must be an integer >= 0, got \'abc\''),
    ({"iter": -5}, '"iter" must be an integer >= 0, got -5'),
    ({"best_val_loss": float("nan")}, '"best_val_loss" must be a finite number, got nan'),
    ({"options": [1]}, '"options" must be an object'),
    ({"last_eval": {"iter": 2}}, '"last_eval" has no "val_loss"'),
])
def test_a_wrong_trainer_state_is_one_line(run, fields, message):
    edit_json(run / "latest" / "trainer_state.json", **fields)
    proc = script("train.py", "--init_from", "resume", "--out_dir", run, "--max_iters", 4)
    one_line_error(proc, f"{run / 'latest' / 'trainer_state.json'}: {message}", "the checkpoint is damaged")


def test_a_wrong_option_in_the_saved_options_is_one_line(run):
    state = json.loads((run / "latest" / "trainer_state.json").read_text())
    state["options"]["dropout"] = "abc"
    (run / "latest" / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(MinigptError, match=r'trainer_state.json \(options\): "dropout" must be a finite number'):
        run_main("--init_from", "resume", "--out_dir", run, "--max_iters", 4)


@pytest.mark.parametrize("fields, message", [
    ({"resid_pdrop": "abc"}, '"resid_pdrop" must be a finite number >= 0 and < 1, got \'abc\''),
    ({"bias": "no"}, '"bias" must be true or false, got \'no\''),  # once read as true
    ({"n_layer": 1.5}, '"n_layer" must be an integer >= 1'),
])
def test_a_wrong_config_json_is_one_line(run, fields, message):
    edit_json(run / "latest" / "config.json", **fields)
    proc = script("generate.py", "--checkpoint", run / "latest", "--seed", 0, "--max-new-tokens", 2)
    one_line_error(proc, f"{run / 'latest' / 'config.json'}: {message}")


def test_a_wrong_step_in_the_optimizer_metadata_is_one_line(run):
    from safetensors.numpy import load_file

    from minigpt.weights import write_safetensors

    path = run / "latest" / "optimizer.safetensors"
    write_safetensors(path, load_file(path), {"step": "-3"})
    write_checksums(run / "latest", ("model.safetensors", "optimizer.safetensors"))  # a file written wrong, not damaged
    with pytest.raises(MinigptError, match=r'optimizer.safetensors \(metadata\): "step" must be an integer written '
                                           r"as a string >= 0, got '-3'"):
        run_main("--init_from", "resume", "--out_dir", run, "--max_iters", 4)


def test_bad_log_lines_are_reported_and_kept_aside(run, capsys):
    log = run / "log.jsonl"
    good = log.read_text().splitlines()
    bad = ['{"iter": "abc", "lr": 0.1}', "not json at all", '{"iter": 1, "train_loss": NaN}']
    log.write_text("\n".join([good[0], *bad, *good[1:]]) + "\n")
    assert run_main("--init_from", "resume", "--out_dir", run, "--max_iters", 3) == 0
    out = capsys.readouterr().out
    assert f"{log}: 3 line(s) are not valid records (first: line 2, " in out and "kept aside in" in out
    assert (run / "log.jsonl.bad").read_text().splitlines() == bad
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["iter"] for r in records] == [0, 1, 2, 3]  # 0 and 1 kept, 2 and 3 by the resumed run


def test_the_schema_types_are_strict():
    assert not schema.Int().test(True) and not schema.Num().test(False)  # JSON's true is not 1
    assert not schema.Num().test(float("inf")) and schema.Num().test(3)
    assert schema.IntText(0).check("12", "step") == 12
    for text in ("-3", "1e3", " 4", "", "٣"):
        assert not schema.IntText(0).test(text)
    assert schema.Optional(schema.Int()).test(None)


# -- 4. token data ----------------------------------------------------------------------------------------------


def test_a_token_file_that_disagrees_with_meta_json_is_refused_when_opened(tmp_path, corpus, data_dir):
    from minigpt.data import load_corpus, prepare

    data = prepare(load_corpus(data=str(corpus)), "char")
    edit_json(data.dir / "meta.json", val_tokens=data.meta["val_tokens"] + 1)
    with pytest.raises(MinigptError, match=r"val.bin holds [\d,]+ uint16 tokens but meta.json says .*; delete .* and it "
                                           r"is prepared again"):
        prepare(load_corpus(data=str(corpus)), "char")


def test_the_advice_for_a_damaged_data_folder_works(corpus, data_dir):
    from minigpt.data import load_corpus, prepare

    data = prepare(load_corpus(data=str(corpus)), "char")
    (data.dir / "train.bin").unlink()
    with pytest.raises(MinigptError, match=f"delete {data.dir} and it is prepared again") as err:
        prepare(load_corpus(data=str(corpus)), "char")
    assert "prepare_data.py" in str(err.value) and "run scripts/prepare_data.py" not in str(err.value)
    import shutil

    shutil.rmtree(data.dir)  # as told
    assert prepare(load_corpus(data=str(corpus)), "char").train.size == data.train.size


@pytest.mark.parametrize("bad", [-1, 65])
def test_forward_and_generate_refuse_ids_outside_the_vocabulary(bad):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=65), seed=0)
    idx = np.array([[1, 2, bad]])
    for call in (lambda: model.forward(idx), lambda: model.generate(idx, 2)):
        with pytest.raises(TokenIdError, match=f"token id {bad} is outside the model's vocabulary of 65 tokens"):
            call()
    assert issubclass(TokenIdError, ValueError) and issubclass(TokenIdError, MinigptError)  # as the other checks


def test_data_that_is_a_fifo_is_refused_not_read_forever(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = script("train.py", "--data", fifo, "--out_dir", tmp_path / "out", timeout=60)
    one_line_error(proc, f"--data {fifo} is neither a regular file nor a directory")


# -- 5. memory before allocation --------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value, fits", [
    ("--batch_size", 10**10, "--batch_size "),
    ("--block_size", 10**12, "--block_size "),
])
def test_a_step_that_cannot_fit_stops_before_anything_is_allocated(tmp_path, corpus, option, value, fits,
                                                                    monkeypatch):
    monkeypatch.setattr(minigpt.memory_plan, "machine_memory", lambda device, available=False: 64 << 30)  # any machine
    out = tmp_path / "out"
    argv = [*TINY, "--data", corpus, "--out_dir", out, option, value]
    with pytest.raises(MinigptError, match="this run needs about .* at its peak but .* is available .*; what would fit: ") as err:
        run_main(*argv)
    assert fits in str(err.value).split("what would fit: ")[1]
    assert not (out / "log.jsonl").exists()


def test_a_block_size_the_corpus_holds_but_memory_does_not(tmp_path, monkeypatch):
    # 2 GiB free, whatever this machine has: the test must never start the 25 GB step it refuses
    monkeypatch.setattr(minigpt.memory_plan, "machine_memory", lambda device, available=False: 2 << 30)
    text = tmp_path / "long.txt"
    text.write_text("".join(f"line {i} of a long text\n" for i in range(30_000)), encoding="utf-8")  # 600k tokens
    out = tmp_path / "out"
    with pytest.raises(MinigptError, match=r"this run needs about [\d.]+ GB at its peak but 2.\d\d GB .*what would fit: "
                                           r".*--batch_size 1 --block_size \d+"):
        run_main(*TINY, "--data", text, "--out_dir", out, "--block_size", 40000, "--batch_size", 1)
    assert not (out / "log.jsonl").exists()


def test_what_fits_is_the_largest_that_fits():
    from minigpt.memory_plan import Step, check_fits, largest_batch, largest_block_size, plan

    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=256, vocab_size=1000)
    step = Step(batch_size=64, block_size=256)
    memory = plan(config, Step(batch_size=37, block_size=256)).peak + 1000
    assert largest_batch(config, step, memory) == 37
    with pytest.raises(MinigptError, match=r"what would fit: .*--batch_size 32 --gradient_accumulation_steps 2"):
        check_fits(config, step, memory)
    assert check_fits(config, Step(batch_size=37, block_size=256), memory).peak <= memory
    # at one row, the longest context that fits a loaded model (its own context 1024): that one fits, one more does not
    loaded = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=1024, vocab_size=1000)
    memory = plan(loaded, Step(block_size=200)).peak
    t = largest_block_size(loaded, Step(batch_size=1, block_size=1024), memory)
    assert plan(loaded, Step(block_size=t)).peak <= memory < plan(loaded, Step(block_size=t + 1)).peak


def test_an_out_dir_left_before_the_first_checkpoint_takes_a_new_run(tmp_path, corpus):
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.jsonl").write_text('{"iter": 0, "lr": 0.0, "train_loss": 4.1}\n')  # a run that died at iteration 0
    assert run_main(*TINY, "--data", corpus, "--max_iters", 1, "--out_dir", out) == 0
    assert [json.loads(line)["iter"] for line in (out / "log.jsonl").read_text().splitlines()] == [0, 1]


# -- 6. the remaining tracebacks and misleading lines -----------------------------------------------------------


def test_a_negative_seed_is_one_line(tmp_path, run):
    one_line_error(script("train.py", "--seed", -1, "--out_dir", tmp_path / "o"), "--seed must be 0 or more, got -1")
    one_line_error(script("generate.py", "--checkpoint", run, "--seed", -1), "--seed must be 0 or more, got -1")


def test_an_unreadable_config_is_not_called_missing(run, monkeypatch):
    """As root, chmod 000 does not stop a read: a PermissionError is simulated, and a directory stands in for a file."""
    config = run / "latest" / "config.json"
    real = Path.read_text

    def denied(self, *args, **kwargs):
        if self == config:
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(MinigptError, match=f"cannot read {config} \\(Permission denied\\)") as err:
        load_checkpoint(run / "latest")
    assert "does not exist" not in str(err.value) and "missing" not in str(err.value)
    monkeypatch.undo()
    config.unlink()
    config.mkdir()
    with pytest.raises(MinigptError, match=f"cannot read {config} \\(Is a directory\\)"):
        load_checkpoint(run / "latest")


def test_an_unreadable_tokenizer_file_is_not_called_missing(run, monkeypatch):
    import minigpt.tokenizer.base

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(minigpt.tokenizer.base, "open", denied, raising=False)  # read_json's open
    with pytest.raises(MinigptError, match=r"cannot read tokenizer file .*char_tokenizer.json \(Permission denied\)"):
        load_checkpoint(run / "latest")


def test_an_interrupted_swap_in_a_read_only_out_dir_is_one_line(run, monkeypatch):
    """A read-only folder (root writes anyway, so os.replace is made to fail with EROFS)."""
    aside = run / ".latest.old-abc123"
    (run / "latest").rename(aside)  # killed between the two renames

    def read_only(*args):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(minigpt.atomic.os, "replace", read_only)
    with pytest.raises(MinigptError, match=f"cannot finish the interrupted replacement of {run / 'latest'} "
                                           r"\(Read-only file system\): its complete previous version is "):
        run_main("--init_from", "resume", "--out_dir", run, "--max_iters", 4)


def test_no_checkpoint_is_ever_written_with_non_finite_weights(tmp_path, corpus):
    from minigpt.trainer import Trainer, resolve_config

    out = tmp_path / "out"
    trainer = Trainer(resolve_config([str(a) for a in (*TINY, "--data", corpus, "--out_dir", out)]))
    trainer.optimizer.flat_params[3] = np.nan
    with pytest.raises(TrainingDiverged, match="the weights hold NaN or infinity; no checkpoint was written"):
        trainer.save("latest", 0, 0.0)
    assert not (out / "latest").exists()


@pytest.mark.parametrize("clip, advised", [(1.0, False), (0, True), (5.0, True)])
def test_divergence_is_said_once_and_advises_only_what_helps(tmp_path, corpus, clip, advised):
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TrainingDiverged, match="diverged at iteration") as err:
            run_main(*TINY, "--data", corpus, "--max_iters", 50, "--eval_interval", 1000, "--learning_rate", 1e30,
                     "--warmup_iters", 0, "--grad_clip", clip, "--out_dir", out, "--workers", 2)
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []  # nothing printed over the bar
    assert ("--grad_clip 1.0" in str(err.value)) == advised
    assert "lower --learning_rate" in str(err.value)


# -- 7. the newcomer's list -------------------------------------------------------------------------------------


def test_a_negative_number_in_e_notation_is_a_value():
    proc = script("train.py", "--learning_rate", "-1e-3")
    same = script("train.py", "--learning_rate", "-0.001")
    assert one_line_error(proc, "--learning_rate must be a finite number >= 0, got -0.001") == one_line_error(same)


@pytest.mark.parametrize("name, argv, suggestion", [
    ("generate.py", ["--temp", "0.5"], "did you mean --temperature?"),
    ("generate.py", ["--max-new", "5"], "did you mean --max-new-tokens?"),
    ("evaluate.py", ["--checkpoint", "x", "--data", "y", "--batch", "8"], "did you mean --batch-size?"),
])
def test_no_script_takes_an_abbreviation(name, argv, suggestion):
    one_line_error(script(name, *argv), "unrecognized arguments", suggestion)


def test_every_script_parses_with_the_shared_parser():
    for path in sorted((REPO / "scripts").glob("*.py")):
        text = path.read_text()
        assert "argparse.ArgumentParser(" not in text, f"{path.name} builds its own argparse parser"


def test_the_offline_gpt2_tokenizer_error_names_both_file_namings(monkeypatch):
    from minigpt.tokenizer import BPETokenizer

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: offline
    with pytest.raises(MinigptError) as err:
        BPETokenizer.from_pretrained("gpt2")
    assert "vocab.json + merges.txt" in str(err.value) and "encoder.json + vocab.bpe" in str(err.value)


def test_a_bpe_that_runs_out_of_pairs_says_so(corpus, capsys):
    from minigpt.data import load_corpus, prepare

    data = prepare(load_corpus(data=str(corpus)), "bpe:4096")
    size = data.meta["vocab_size"]
    assert size < 4096
    assert f"--tokenizer bpe:4096: the text has only enough repeated pairs for {size} tokens" in capsys.readouterr().out


def test_interactive_answers_the_prompt_option_first(tmp_path):
    import importlib.util
    import io
    import types

    from minigpt.tokenizer import CharTokenizer

    spec = importlib.util.spec_from_file_location("script_generate", REPO / "scripts" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    tokenizer = CharTokenizer.train(TEXT)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=16, vocab_size=tokenizer.vocab_size), seed=0)
    args = types.SimpleNamespace(max_new_tokens=3, temperature=0, top_k=None, top_p=None, num_samples=1,
                                 window_shift=None, min_p=None, repetition_penalty=None, frequency_penalty=0.0,
                                 presence_penalty=0.0, no_repeat_ngram_size=None, stop=None, prompt_lookup=None,
                                 prompt="little pigs")
    out = io.StringIO()
    lines = iter(["day 3", ""])
    generate.interactive_loop(model, tokenizer, args, np.random.default_rng(0), out, read_line=lambda _: next(lines))
    text = out.getvalue()
    assert text.startswith("little pigs") and "day 3" in text


def test_evaluate_defaults_to_64_windows_unless_their_logits_are_too_big():
    import importlib.util

    spec = importlib.util.spec_from_file_location("script_evaluate", REPO / "scripts" / "evaluate.py")
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    assert evaluate.default_batch_size(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=256, vocab_size=65)) == 64
    assert evaluate.default_batch_size(GPTConfig.preset("gpt2")) == 5  # 5 x 1024 x 50257 float32 logits: 1 GB


def test_a_hand_copied_shakespeare_is_announced_as_itself(data_dir, monkeypatch, capsys):
    import hashlib

    from minigpt.data import load_corpus, prepare

    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50
    path = data_dir / "shakespeare" / "input.txt"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    monkeypatch.setenv("MINIGPT_SHAKESPEARE_SHA256", hashlib.sha256(text.encode()).hexdigest())
    monkeypatch.setenv("MINIGPT_SHAKESPEARE_URL", "http://127.0.0.1:9/never-used.txt")
    prepare(load_corpus("shakespeare"), "char")
    said = capsys.readouterr().out
    assert f"from {path}" in said and "never-used" not in said


def test_init_from_a_missing_home_folder_says_it_does_not_exist(tmp_path, monkeypatch):
    from minigpt.config import parse_args

    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(MinigptError, match=f"--init_from ~/gpt2: {tmp_path / 'gpt2'} does not exist"):
        parse_args(["--init_from", "~/gpt2"])


def test_a_block_size_past_the_models_context_is_found_before_the_corpus_is_tokenized(run, corpus, monkeypatch):
    def not_now(*args, **kwargs):
        raise AssertionError("the corpus was tokenized first")

    monkeypatch.setattr(minigpt.trainer, "prepare", not_now)
    with pytest.raises(MinigptError, match="--block_size 64 exceeds the model's context of 16 tokens"):
        run_main(*TINY[:6], "--block_size", 64, "--init_from", run / "latest", "--data", corpus,
                 "--out_dir", run.parent / "tuned")


def test_help_on_gpt_says_what_it_is():
    assert "GPT-2" in GPT.__doc__ and "forward" in GPT.__doc__
    assert "dtype" in GPT.__init__.__doc__ and "seed" in GPT.__init__.__doc__


@pytest.mark.skipif(not os.environ.get("MINIGPT_GPT2_TOKENIZER_DIR"),
                    reason="MINIGPT_GPT2_TOKENIZER_DIR (GPT-2's encoder.json, vocab.bpe) not set")
def test_the_docs_small_local_gpt2_fine_tunes_offline(tmp_path, corpus, monkeypatch):
    """docs/robustness.md's recipe: a small GPT-2-shaped directory with GPT-2's tokenizer, then --init_from it."""
    from minigpt.tokenizer import BPETokenizer

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # offline: nothing may be downloaded
    tokenizer = BPETokenizer.from_pretrained(os.environ["MINIGPT_GPT2_TOKENIZER_DIR"])
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=128, vocab_size=tokenizer.vocab_size), seed=0)
    model.save_pretrained(tmp_path / "tiny-gpt2")
    tokenizer.save(tmp_path / "tiny-gpt2")
    out = tmp_path / "out-tiny"
    assert run_main("--init_from", tmp_path / "tiny-gpt2", "--data", corpus, "--block_size", 32, "--batch_size", 2,
                    "--max_iters", 2, "--eval_interval", 2, "--eval_iters", 1, "--sample_tokens", 0,
                    "--out_dir", out) == 0
    assert load_trainer_state(out / "latest")["iter"] == 2
