"""The memory plan (minigpt/memory_plan.py, scripts/memory.py, train.py's check before it allocates)."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from minigpt import memory_plan
from minigpt.errors import MinigptError
from minigpt.memory_plan import Step, block_activation_bytes, check_fits, config_of, parse_bytes, plan
from minigpt.model import GPT, GPTConfig
from tests.test_train import TEXT, run_main

REPO = Path(__file__).resolve().parent.parent


def held_bytes(obj, params, seen=None):
    """The bytes of the distinct arrays (by their base buffer) that `obj` holds, parameters excluded."""
    seen = {} if seen is None else seen
    if isinstance(obj, np.ndarray):
        base = obj
        while isinstance(base.base, np.ndarray):
            base = base.base
        if id(base) not in params:
            seen[id(base)] = base.nbytes
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            held_bytes(o, params, seen)
    return sum(seen.values())


@pytest.mark.parametrize("B, T, C, H, dropout", [(1, 128, 64, 4, 0.0), (2, 300, 64, 4, 0.0), (1, 256, 96, 6, 0.1),
                                                 (3, 64, 32, 2, 0.2)])
def test_the_per_block_count_is_what_a_block_keeps(B, T, C, H, dropout):
    """The plan's activations per block equal the bytes minigpt.fast's GPT-2 block cache holds."""
    config = GPTConfig(n_layer=2, n_head=H, n_embd=C, block_size=T, vocab_size=50, dropout=dropout)
    model = GPT(config, seed=0)
    idx = np.zeros((B, T), dtype=np.int64)
    model.forward(idx, idx, return_logits=False)
    params = {id(p) for p in model.params.values()}
    held = held_bytes(model._caches[2][1], params)
    assert block_activation_bytes(config, B, T, 4, dropout) == held


@pytest.mark.parametrize("targets, lora_dropout", [(("c_attn", "attn.c_proj"), 0.0), (("c_fc", "mlp.c_proj"), 0.1),
                                                   (("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"), 0.2)])
def test_the_per_block_count_with_lora_is_what_a_block_keeps(targets, lora_dropout):
    """LoRA: frozen layers keep no input; adapters keep x A^T (and their dropout's copy and mask)."""
    from minigpt.lora import add_adapters
    from minigpt.nn.lora import LoraConfig, TARGETS

    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=256, vocab_size=50, dropout=0.1)
    model = GPT(config, seed=0)
    add_adapters(model, LoraConfig(rank=4, dropout=lora_dropout, targets=targets), base="t")
    idx = np.zeros((2, 256), dtype=np.int64)
    model.forward(idx, idx, return_logits=False)
    held = held_bytes(model._caches[2][1], {id(p) for p in (*model.params.values(), *model.adapters.values())})
    modules = [TARGETS[t] for t in targets]
    assert block_activation_bytes(config, 2, 256, 4, 0.1, 4, modules, lora_dropout) == held


def test_recompute_keeps_the_block_inputs_and_lora_drops_the_optimizer():
    config = GPTConfig.preset("gpt2-large")
    full, recompute = plan(config, Step()), plan(config, Step(recompute=True))
    assert recompute.per_block == 1 * 1024 * 1280 * 4 and recompute.step_peak < full.step_peak - 3 * 2**30
    lora = plan(config, Step(lora_rank=8))
    assert lora.rows["optimizer state (AdamW m, v)"] < 2**26 < full.rows["optimizer state (AdamW m, v)"]
    assert full.rows["parameters"] == 4 * 774_030_080  # gpt2-large's parameter count, from shapes alone
    two_workers = plan(config, Step(batch_size=2, workers=2))
    assert two_workers.rows_in_flight == 2 and two_workers.per_block == 2 * full.per_block  # a row per worker


def test_the_largest_batch_fits_and_one_more_does_not():
    config, step = GPTConfig.preset("gpt2"), Step(block_size=512)
    memory = 6 * 2**30
    best = memory_plan.largest_batch(config, step, memory)
    assert plan(config, Step(block_size=512, batch_size=best)).peak <= memory
    assert plan(config, Step(block_size=512, batch_size=best + 1)).peak > memory
    assert memory_plan.largest_batch(config, step, 2**20) is None


def test_a_step_that_cannot_fit_names_what_would():
    config = GPTConfig.preset("gpt2-large")
    step = Step(batch_size=4, gradient_accumulation_steps=2)
    memory = plan(config, Step(recompute=True)).peak + 2**28
    with pytest.raises(MinigptError) as err:
        check_fits(config, step, memory)
    message = str(err.value)
    assert "\n" not in message and "at its peak" in message
    assert "--recompute true" in message and "--lora_rank 8" in message
    assert check_fits(config, Step(recompute=True), memory).peak <= memory


def test_parse_bytes():
    assert parse_bytes("24GB") == 24 * 2**30 and parse_bytes("512mb") == 512 * 2**20 and parse_bytes("1.5G") == 3 * 2**29
    for bad in ("lots", "-1GB", "12XB"):
        with pytest.raises(MinigptError, match="--memory expects a size"):
            parse_bytes(bad)


def test_config_of_reads_shapes_only(tmp_path):
    GPT(GPTConfig(n_layer=3, n_head=2, n_embd=16, block_size=32, vocab_size=50), seed=0).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not read")
    assert config_of(tmp_path / "m").n_layer == 3
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "m")}))
    assert config_of(adapter).n_embd == 16
    assert config_of("gpt2-xl").n_layer == 48
    with pytest.raises(MinigptError, match="neither a GPT-2 name"):
        config_of(tmp_path / "nothing")


def test_memory_script_prints_the_plan(capsys):
    main = runpy.run_path(str(REPO / "scripts" / "memory.py"))["main"]
    main(["--init_from", "gpt2-xl", "--batch_size", "1", "--block_size", "1024", "--recompute", "--lora_rank", "8",
          "--memory", "24GB"])
    out = capsys.readouterr().out
    for row in ("parameters", "gradients", "optimizer state", "activations", "per block", "workspace", "peak"):
        assert row in out, row
    assert "1,557,611,200 parameters, 3,686,400 trained" in out
    assert "in 24.00 GB: this step fits; the largest --batch_size that fits: " in out
    with pytest.raises(MinigptError, match="exceeds the model's context"):
        main(["--init_from", "gpt2", "--block_size", "2048"])


def test_train_stops_before_allocating_when_the_plan_cannot_fit(tmp_path, monkeypatch):
    corpus = tmp_path / "pigs.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(memory_plan, "machine_memory", lambda device, available=False: 2**20)
    built = []
    monkeypatch.setattr(GPT, "_init_params", lambda self: built.append(1) or {})
    with pytest.raises(MinigptError, match=r"this run needs about .* at its peak but .* is available"):
        run_main("--data", corpus, "--out_dir", tmp_path / "out", "--n_layer", 2, "--n_embd", 32, "--n_head", 2,
                 "--block_size", 16, "--max_iters", 1)
    assert built == []  # no weight was allocated


def test_the_query_block_area_in_closed_form_is_the_sum_over_blocks():
    """The attention probabilities' count is a closed form, so a plan for --block_size 10**12 costs no loop."""
    from minigpt.memory_plan import QUERY_BLOCK, _query_block_area

    for T in (*range(1, 600), 1023, 1024, 1025, 40000):
        blocks = [(min(s + QUERY_BLOCK, T) - s) * min(s + QUERY_BLOCK, T) for s in range(0, T, QUERY_BLOCK)]
        assert _query_block_area(T) == sum(blocks), T
