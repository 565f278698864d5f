"""The fine-tuning recipe (scripts/configs/finetune_shakespeare.toml), offline from a local GPT-2
directory, and always_save_checkpoint."""

import hashlib
import json
import socket
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from minigpt.checkpoint import is_checkpoint, load_trainer_state
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizer import BPETokenizer
from minigpt.trainer import Trainer, resolve_config

RECIPE = Path(__file__).resolve().parent.parent / "scripts" / "configs" / "finetune_shakespeare.toml"
TEXT = "".join(f"ROMEO {i}:\nWhat light through yonder window breaks? It is the east, and day {i % 9}.\n\n"
               for i in range(120))
TINY_MODEL = ["--block_size", "16", "--sample_tokens", "4"]  # the recipe, but a context the tiny model has


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the recipe tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def gpt2_dir(tmp_path):
    """A small random GPT-2 in Hugging Face's layout: config.json, model.safetensors, vocab.json, merges.txt."""
    directory = tmp_path / "tiny-gpt2"
    tokenizer = BPETokenizer.train(TEXT, vocab_size=300)
    GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tokenizer.vocab_size), seed=3).save_pretrained(directory)
    tokenizer.save(directory)
    return directory


@pytest.fixture
def shakespeare(data_dir, monkeypatch):
    """data/shakespeare/input.txt already in place (as after the first download), with its checksum."""
    path = data_dir / "shakespeare" / "input.txt"
    path.parent.mkdir(parents=True)
    path.write_text(TEXT, encoding="utf-8")
    monkeypatch.setenv("MINIGPT_SHAKESPEARE_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())


def test_the_recipe_is_nanogpts_finetune_shakespeare():
    cfg = resolve_config(["--config", str(RECIPE)])
    assert (cfg.init_from, cfg.dataset, cfg.tokenizer) == ("gpt2", "shakespeare", "gpt2")
    assert (cfg.batch_size, cfg.gradient_accumulation_steps, cfg.block_size) == (1, 32, 1024)
    assert (cfg.learning_rate, cfg.decay_lr, cfg.always_save_checkpoint) == (3e-5, False, False)
    assert (cfg.max_iters, cfg.eval_interval, cfg.eval_iters) == (20, 5, 40)


def test_two_iterations_of_the_recipe_train_offline_from_a_local_directory(tmp_path, gpt2_dir, shakespeare, offline):
    out = tmp_path / "out"
    cfg = resolve_config(["--config", str(RECIPE), "--init_from", str(gpt2_dir), "--out_dir", str(out),
                          "--max_iters", "2", *TINY_MODEL])
    trainer = Trainer(cfg)
    start = {name: p.copy() for name, p in trainer.model.params.items()}
    assert trainer.run() == 0

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [0, 1, 2]  # one record per iteration (2 = max_iters: evaluation only)
    assert [r["iter"] for r in records if "train_loss" in r] == [0, 1]
    assert all(r["lr"] == 3e-5 for r in records)  # no warmup, no decay
    assert {r["iter"] for r in records if "val_loss" in r} == {0, 2}
    moved = max(float(np.abs(trainer.model.params[n] - start[n]).max()) for n in start)
    assert 0 < moved < 10 * 2 * 3e-5  # Adam moves a weight by about lr per step
    assert is_checkpoint(out / "best") and is_checkpoint(out / "latest")
    state = load_trainer_state(out / "latest")
    assert state["options"]["gradient_accumulation_steps"] == 32 and state["iter"] in (0, 2)
    saved = GPT.from_pretrained(out / "latest")
    assert saved.config.n_embd == 16 and saved.config.vocab_size == trainer.tokenizer.vocab_size


@pytest.mark.parametrize("always, expected", [
    (True, [("latest", 0), ("best", 0), ("latest", 1), ("latest", 2), ("best", 2), ("latest", 3)]),
    (False, [("latest", 0), ("best", 0), ("latest", 2), ("best", 2)]),
])
def test_always_save_checkpoint_false_saves_only_improvements(tmp_path, gpt2_dir, shakespeare, monkeypatch,
                                                              always, expected):
    val_losses = iter([2.0, 2.5, 1.5, 1.7])  # evaluations at iterations 0, 1, 2, 3: improvements at 0 and 2
    monkeypatch.setattr(Trainer, "estimate_loss", lambda self, it: {"train": 1.0, "val": next(val_losses)})
    saves = []
    monkeypatch.setattr(Trainer, "save", lambda self, name, it, elapsed: saves.append((name, it)))
    cfg = resolve_config(["--init_from", str(gpt2_dir), "--dataset", "shakespeare", "--out_dir", str(tmp_path / "out"),
                          "--max_iters", "3", "--eval_interval", "1", "--batch_size", "2", "--sample_tokens", "0",
                          "--block_size", "16", "--always_save_checkpoint", str(always).lower()])
    Trainer(cfg).run()
    assert saves == expected


def test_saving_a_training_checkpoint_copies_neither_weights_nor_moments(tmp_path):
    from minigpt.checkpoint import load_optimizer_state, save_checkpoint
    from minigpt.optim import AdamW
    from minigpt.tokenizer import CharTokenizer

    tokenizer = CharTokenizer.train("abcdefgh ij\n")
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=256, block_size=64, vocab_size=tokenizer.vocab_size), seed=0)
    optimizer = AdamW(model.params, lr=1e-2)
    optimizer.step({k: np.ones_like(p) for k, p in model.params.items()})
    weights_bytes = sum(p.nbytes for p in model.params.values())  # 6.4 MB; with m and v, 19 MB are written
    tracemalloc.start()
    save_checkpoint(tmp_path / "latest", model, tokenizer, optimizer, {"iter": 1})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < weights_bytes / 10, f"saving allocated {peak} bytes at peak"
    tensors, metadata = load_optimizer_state(tmp_path / "latest")
    assert metadata["step"] == "1"
    loaded = GPT.from_pretrained(tmp_path / "latest")
    for name, p in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], p)
        np.testing.assert_array_equal(tensors[f"m.{name}"], optimizer.m[name])
        np.testing.assert_array_equal(tensors[f"v.{name}"], optimizer.v[name])


XL_LORA = RECIPE.parent / "finetune_shakespeare_xl_lora.toml"


def test_the_xl_lora_recipe_is_nanogpts_finetune_with_lora():
    cfg = resolve_config(["--config", str(XL_LORA)])
    assert (cfg.init_from, cfg.dataset, cfg.tokenizer) == ("gpt2-xl", "shakespeare", "gpt2")
    assert (cfg.batch_size, cfg.gradient_accumulation_steps, cfg.block_size, cfg.max_iters) == (1, 32, 1024, 20)
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.recompute) == (8, 8.0, "c_attn,attn.c_proj", True)


def test_two_iterations_of_the_xl_lora_recipe_train_offline_adapters_only(tmp_path, gpt2_dir, shakespeare, offline):
    """The recipe on a small random local directory: only the adapters move, latest/ holds them alone,
    and merged/ is a plain GPT-2 checkpoint of the base's shapes."""
    out = tmp_path / "out"
    cfg = resolve_config(["--config", str(XL_LORA), "--init_from", str(gpt2_dir), "--out_dir", str(out),
                          "--max_iters", "2", "--gradient_accumulation_steps", "2", *TINY_MODEL])
    trainer = Trainer(cfg)
    base = {name: p.copy() for name, p in trainer.model.params.items()}
    assert trainer.run() == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "train_loss" in r] == [0, 1]
    for name, p in base.items():
        np.testing.assert_array_equal(trainer.model.params[name], p)  # the base is frozen
    assert any(np.abs(a).max() > 0 for n, a in trainer.model.adapters.items() if "lora_B" in n)  # B left zero
    assert (out / "latest" / "adapter_model.safetensors").is_file() and not (out / "latest" / "model.safetensors").exists()
    merged = GPT.from_pretrained(out / "merged")
    assert set(merged.params) == set(base) and merged.lora is None
