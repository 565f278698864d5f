"""Checkpoints: complete, loadable without pickle, and atomic (a failed or killed write keeps the old one)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from minigpt.checkpoint import (is_checkpoint, load_optimizer_state, load_trainer_state, recover_checkpoint,
                                save_checkpoint)
from minigpt.errors import MinigptError
from minigpt.model import GPT, GPTConfig
from minigpt.optim import AdamW
from minigpt.tokenizer import CharTokenizer, load_tokenizer

REPO = Path(__file__).resolve().parent.parent


def tiny_run(seed=0):
    """A tiny model, its char tokenizer and an optimizer that has taken one step."""
    tokenizer = CharTokenizer.train("abcdefgh ij\n")
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=tokenizer.vocab_size), seed=seed)
    optimizer = AdamW(model.params, lr=1e-2)
    optimizer.step({k: np.ones_like(p) for k, p in model.params.items()})
    return model, tokenizer, optimizer


def test_checkpoint_round_trip(tmp_path):
    model, tokenizer, optimizer = tiny_run()
    state = {"iter": 7, "best_val_loss": 1.5, "batch_rng": np.random.default_rng(3).bit_generator.state}
    path = save_checkpoint(tmp_path / "latest", model, tokenizer, optimizer, state)
    assert is_checkpoint(path)
    assert {p.suffix for p in path.iterdir()} <= {".json", ".safetensors", ".sha256"}  # nothing that could hold pickled code (.sha256: text checksums)

    loaded = GPT.from_pretrained(path)
    for name, p in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], p)
    assert load_tokenizer(path).encode("abc ij") == tokenizer.encode("abc ij")
    tensors, metadata = load_optimizer_state(path)
    assert metadata["step"] == "1"
    np.testing.assert_array_equal(tensors["m.transformer.wte.weight"], optimizer.m["transformer.wte.weight"])
    back = load_trainer_state(path)
    assert back["iter"] == 7 and back["best_val_loss"] == 1.5
    rng = np.random.default_rng()
    rng.bit_generator.state = back["batch_rng"]
    assert rng.random() == np.random.default_rng(3).random()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, tokenizer, optimizer = tiny_run()
    save_checkpoint(tmp_path / "latest", model, tokenizer, optimizer, {"iter": 1})
    before = (tmp_path / "latest" / "model.safetensors").read_bytes()

    def broken_state_dict():
        raise OSError("disk full")

    model.params["transformer.wte.weight"] += 1.0
    monkeypatch.setattr(optimizer, "state_dict", broken_state_dict)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "latest", model, tokenizer, optimizer, {"iter": 2})
    assert load_trainer_state(tmp_path / "latest")["iter"] == 1
    assert (tmp_path / "latest" / "model.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from tests.test_checkpoint import tiny_run
    from minigpt.checkpoint import save_checkpoint
    model, tokenizer, optimizer = tiny_run()
    i = 0
    while True:
        i += 1
        save_checkpoint({out!r}, model, tokenizer, optimizer, {{"iter": i}})
        if i == 1:
            print("first", flush=True)
    """
)


def test_kill_during_writes_leaves_a_complete_checkpoint(tmp_path):
    out = tmp_path / "latest"
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), out=str(out))], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"first"
        time.sleep(0.3)  # let it be somewhere inside a write
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    recover_checkpoint(out)  # puts back a checkpoint renamed aside, if the kill came between the renames
    assert is_checkpoint(out), sorted(p.name for p in tmp_path.iterdir())
    GPT.from_pretrained(out)
    assert load_trainer_state(out)["iter"] >= 1


def test_kill_between_the_renames_is_recovered(tmp_path):
    model, tokenizer, optimizer = tiny_run()
    save_checkpoint(tmp_path / "latest", model, tokenizer, optimizer, {"iter": 3})
    os.replace(tmp_path / "latest", tmp_path / ".latest.old-abc")  # the old one renamed aside ...
    (tmp_path / ".latest.tmp-def").mkdir()  # ... and the new one not yet renamed in
    assert not is_checkpoint(tmp_path / "latest")  # a predicate: it changes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == [".latest.old-abc", ".latest.tmp-def"]
    recover_checkpoint(tmp_path / "latest")
    assert is_checkpoint(tmp_path / "latest")
    assert load_trainer_state(tmp_path / "latest")["iter"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_damaged_trainer_state_is_an_error(tmp_path):
    model, tokenizer, optimizer = tiny_run()
    path = save_checkpoint(tmp_path / "latest", model, tokenizer, optimizer, {"iter": 1})
    (path / "trainer_state.json").write_text("{not json")
    with pytest.raises(MinigptError, match="damaged"):
        load_trainer_state(path)
    (path / "trainer_state.json").write_text(json.dumps({"nothing": 1}))
    with pytest.raises(MinigptError, match="damaged"):
        load_trainer_state(path)
