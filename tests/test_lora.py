"""LoRA: adapters on frozen weights (minigpt/nn/lora.py, minigpt/lora.py), their training, checkpoints,
merging and loading."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from minigpt import lora as lora_files
from minigpt.errors import MinigptError
from minigpt.loading import load_checkpoint
from minigpt.lora import add_adapters, merged
from minigpt.model import GPT, GPTConfig
from minigpt.nn import lm_head, lora
from minigpt.optim import FlatAdamW
from minigpt.parallel import DataParallel
from minigpt.tokenizer import BPETokenizer
from minigpt.weights import read_safetensors
from tests.test_strict_device import cupy  # noqa: F401 (the fixture)
from tests.test_train import TEXT, read_log, run_main, train_losses
from tests.test_train import corpus  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parent.parent
ALL = tuple(lora.TARGETS)


def tiny(dropout=0.0, **switches):
    return GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=37, dropout=dropout, **switches)


def adapted(config, dtype="float32", rank=4, targets=("c_attn", "attn.c_proj"), lora_dropout=0.0, nonzero=True):
    model = GPT(config, dtype=dtype, seed=0)
    add_adapters(model, lora.LoraConfig(rank=rank, alpha=8.0, dropout=lora_dropout, targets=targets), base="t", seed=1)
    if nonzero:  # a trained adapter: B away from its zero start
        rng = np.random.default_rng(2)
        for name, a in model.adapters.items():
            if "lora_B" in name:
                a[...] = rng.standard_normal(a.shape) * 0.05
    return model


def batch(B=3, T=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 37, (B, T)), rng.integers(0, 37, (B, T))


def test_adapters_are_shaped_and_initialised_as_peft():
    model = adapted(tiny(), nonzero=False)
    A, B = (model.adapters[f"transformer.h.1.attn.c_attn.lora_{x}.weight"] for x in "AB")
    assert A.shape == (4, 32) and B.shape == (96, 4)  # A: (r, in), B: (out, r)
    assert not B.any() and np.abs(A).max() <= 1 / np.sqrt(32) and A.std() > 0.1 / np.sqrt(32)
    assert len(model.adapters) == 2 * 2 * 2 and model.lora.scale == 2.0


def test_a_fresh_adapter_leaves_the_model_unchanged():
    idx, _ = batch()
    base = GPT(tiny(), seed=0).eval()
    model = adapted(tiny(), targets=ALL, nonzero=False).eval()
    np.testing.assert_array_equal(model.forward(idx)[0], base.forward(idx)[0])


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_merged_weights_give_the_adapted_logits(dtype, tol):
    idx, _ = batch()
    model = adapted(tiny(), dtype=dtype, targets=ALL).eval()
    plain = merged(model)
    assert plain.lora is None and set(plain.params) == set(model.params)
    logits, merged_logits = model.forward(idx)[0], plain.forward(idx)[0]
    assert np.abs(logits - GPT(tiny(), dtype=dtype, seed=0).eval().forward(idx)[0]).max() > 1e-3  # it changed
    np.testing.assert_allclose(merged_logits, logits, atol=tol, rtol=tol)


def test_only_the_adapters_get_gradients_and_the_frozen_head_forms_no_dwte(monkeypatch):
    """The backward never runs lm_head.backward (the (V, C) product) and returns exactly the adapters'
    gradients; the frozen linear layers return no gradient at all."""
    monkeypatch.setattr(lm_head, "backward", lambda *a: pytest.fail("the frozen head's dW was computed"))
    model = adapted(tiny(), targets=("c_attn", "mlp.c_proj"))
    model.forward(*batch())
    grads = model.backward()
    assert list(grads) == list(model.adapters)
    x, w = np.ones((2, 3, 4), np.float32), np.ones((4, 5), np.float32)
    _, frozen_grads = lora.backward(np.ones((2, 3, 5), np.float32), lora.forward(x, lora.Frozen(w))[1])
    assert frozen_grads == {}


def test_the_optimizer_holds_only_the_adapters():
    model = adapted(tiny())
    optimizer = FlatAdamW(model.trainable, 1e-3)
    n_adapter = sum(a.size for a in model.adapters.values())
    assert optimizer.numel == n_adapter < model.num_params() / 10 and optimizer.m.size < 2 * n_adapter
    before = {k: v.copy() for k, v in model.params.items()}
    adapters_before = {k: v.copy() for k, v in model.adapters.items()}
    parallel = DataParallel(model, workers=2)
    X, Y = batch()
    _, grads = parallel.forward_backward(X, Y, into=optimizer.grad_views)
    optimizer.step(grads, lr=1e-2)
    for name, value in before.items():
        np.testing.assert_array_equal(model.params[name], value)  # the base did not move
    for name, value in adapters_before.items():
        assert not np.array_equal(model.adapters[name], value), name  # every adapter did


@pytest.mark.parametrize("workers", [1, 2])
def test_lora_with_recompute_and_workers_is_exact(workers):
    """Adapter dropout and model dropout, replayed by --recompute: the same bits, on 1 or 2 workers."""
    rng = np.random.default_rng(4)
    X, Y = rng.integers(0, 37, (2, 4, 16)), rng.integers(0, 37, (2, 4, 16))
    results = []
    for recompute in (False, True):
        model = adapted(tiny(dropout=0.1), targets=ALL, lora_dropout=0.2)
        model.recompute = recompute
        parallel = DataParallel(model, workers=workers)
        loss, grads = parallel.forward_backward(X, Y, dropout_key=(3, 1))
        results.append((loss, {k: v.copy() for k, v in grads.items()}))
        parallel.close()
    (loss, grads), (loss_r, grads_r) = results
    assert loss == loss_r and list(grads) == [k for k in grads_r]
    for name in grads:
        np.testing.assert_array_equal(grads_r[name], grads[name], err_msg=name)


def test_the_kv_cache_runs_the_adapters():
    """Generation with adapters (KV-cache steps) draws the tokens of the merged model."""
    model = adapted(tiny(), targets=ALL).eval()
    prompt = np.array([[1, 2, 3]])
    ours = model.generate(prompt, 10, temperature=0.7, top_k=5, seed=0)
    np.testing.assert_array_equal(ours, merged(model).generate(prompt, 10, temperature=0.7, top_k=5, seed=0))


def test_bad_targets_are_one_line():
    with pytest.raises(MinigptError, match="--lora_targets must name some of c_attn"):
        lora.parse_targets("c_attn,q_proj")


# -- files and train.py ------------------------------------------------------------------------------


@pytest.fixture
def base_dir(tmp_path):
    """A small random GPT-2 directory with its BPE tokenizer (as a local Hugging Face download)."""
    directory = tmp_path / "base"
    tokenizer = BPETokenizer.train(TEXT, vocab_size=300)
    GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=tokenizer.vocab_size),
        seed=3).save_pretrained(directory)
    tokenizer.save(directory)
    return directory


def lora_run(base_dir, corpus, out, *extra):
    return run_main("--init_from", base_dir, "--data", corpus, "--out_dir", out, "--lora_rank", 4,
                    "--lora_dropout", 0.1, "--dropout", 0.1, "--block_size", 16, "--batch_size", 2,
                    "--gradient_accumulation_steps", 2, "--max_iters", 4, "--lr_decay_iters", 4,
                    "--eval_interval", 2, "--eval_iters", 2, "--log_interval", 1, "--sample_tokens", 4,
                    "--learning_rate", 1e-2, "--workers", 2, *extra)


def test_train_saves_adapters_only_resumes_exactly_and_merges(tmp_path, base_dir, corpus):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert lora_run(base_dir, corpus, whole) == 0
    assert lora_run(base_dir, corpus, cut, "--max_iters", 2, "--recompute", "true") == 0
    latest = cut / "latest"
    assert not (latest / "model.safetensors").exists()
    adapter_bytes = (latest / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < (base_dir / "model.safetensors").stat().st_size / 5
    config = json.loads((latest / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir.resolve()) and config["r"] == 4
    assert config["target_modules"] == ["c_attn", "attn.c_proj"] and config["minigpt"]["base_fingerprint"]
    names = set(read_safetensors(latest / "adapter_model.safetensors"))
    assert "base_model.model.transformer.h.1.attn.c_proj.lora_B.weight" in names and len(names) == 2 * 2 * 2

    assert run_main("--init_from", "resume", "--out_dir", cut, "--max_iters", 4) == 0
    assert train_losses(read_log(cut)) == train_losses(read_log(whole))  # the resume is exact

    # the merged checkpoint: a plain GPT-2 with the base's tensors and shapes, and the adapted logits
    merged_dir = cut / "merged"
    base_tensors, merged_tensors = read_safetensors(base_dir / "model.safetensors"), read_safetensors(
        merged_dir / "model.safetensors")
    assert {k: v.shape for k, v in merged_tensors.items()} == {k: v.shape for k, v in base_tensors.items()}
    assert json.loads((merged_dir / "config.json").read_text())["model_type"] == "gpt2"
    adapter_model, tokenizer, _ = load_checkpoint(cut / "latest")
    merged_model, merged_tokenizer, _ = load_checkpoint(merged_dir)
    assert adapter_model.lora is not None and merged_model.lora is None
    assert tokenizer.vocab_size == merged_tokenizer.vocab_size
    idx = np.arange(16)[None] % tokenizer.vocab_size
    np.testing.assert_allclose(merged_model.forward(idx)[0], adapter_model.forward(idx)[0], atol=1e-5, rtol=1e-5)


def test_scripts_take_either_form(tmp_path, base_dir, corpus, capsys):
    out = tmp_path / "run"
    assert lora_run(base_dir, corpus, out, "--max_iters", 2) == 0
    capsys.readouterr()
    generate = runpy.run_path(str(REPO / "scripts" / "generate.py"))["main"]
    evaluate = runpy.run_path(str(REPO / "scripts" / "evaluate.py"))["main"]
    texts, losses = [], []
    for checkpoint in (out / "latest", out / "merged"):
        generate(["--checkpoint", str(checkpoint), "--prompt", "ROMEO", "--max-new-tokens", "12", "--seed", "3"])
        texts.append(capsys.readouterr().out)
        evaluate(["--checkpoint", str(checkpoint), "--data", str(corpus), "--batch-size", "4"])
        losses.append(float(capsys.readouterr().out.splitlines()[-1].split()[1]))
    assert texts[0] == texts[1] and texts[0].startswith("ROMEO")
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_an_adapter_on_another_base_is_refused_in_one_line(tmp_path, base_dir, corpus):
    out = tmp_path / "run"
    assert lora_run(base_dir, corpus, out, "--max_iters", 2, "--merge_lora", "false") == 0
    assert not (out / "merged").exists()
    weights = read_safetensors(base_dir / "model.safetensors")
    weights["transformer.h.0.mlp.c_fc.weight"] = weights["transformer.h.0.mlp.c_fc.weight"] + 1.0
    from minigpt.weights import write_safetensors
    write_safetensors(base_dir / "model.safetensors", weights, metadata={"format": "pt"})
    with pytest.raises(MinigptError, match="was trained on a different base"):
        load_checkpoint(out / "latest")


def test_lora_options_are_checked(tmp_path, corpus, base_dir):
    with pytest.raises(MinigptError, match="--lora_rank adapts a trained model"):
        run_main("--lora_rank", 4, "--data", corpus, "--out_dir", tmp_path / "x")
    with pytest.raises(MinigptError, match="--lora_dropout must be in"):
        run_main("--init_from", base_dir, "--lora_rank", 4, "--lora_dropout", 1.0, "--out_dir", tmp_path / "x")
    with pytest.raises(MinigptError, match="--lora_targets"):
        run_main("--init_from", base_dir, "--lora_rank", 4, "--lora_targets", "wte", "--out_dir", tmp_path / "x")


def test_a_missing_base_is_one_line(tmp_path):
    directory = tmp_path / "adapter"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": str(tmp_path / "gone"), "r": 2, "lora_alpha": 8,
         "target_modules": ["c_attn"]}))
    (directory / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(MinigptError, match="adapts the base model .*gone, which cannot be loaded"):
        lora_files.load_adapters(directory)


# -- PEFT's LoraLayer (tests/fixtures/lora_tiny, written by scripts/bench/make_lora_reference.py) -----------

PEFT_FIXTURE = REPO / "tests" / "fixtures" / "lora_tiny"


def test_peft_adapter_gives_peft_logits_loss_and_gradients():
    """PEFT's own adapter files on their base: our forward and backward give torch's numbers (float64)."""
    reference = read_safetensors(PEFT_FIXTURE / "reference.safetensors")
    model, _ = lora_files.load_adapters(PEFT_FIXTURE / "adapter", dtype="float64")
    assert model.lora == lora.LoraConfig(rank=4, alpha=8.0, dropout=0.0, targets=("c_attn", "attn.c_proj"))
    logits, _ = model.forward(reference["input_ids"])
    np.testing.assert_allclose(logits, reference["logits"], rtol=1e-10, atol=1e-10)
    model.train()
    _, loss = model.forward(reference["input_ids"], reference["targets"])
    grads = model.backward()
    assert loss == pytest.approx(float(reference["loss"][0]), rel=1e-12)
    assert sorted(f"grad.{name}" for name in grads) == sorted(k for k in reference if k.startswith("grad."))
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, reference[f"grad.{name}"], rtol=1e-9, atol=1e-12, err_msg=name)


def test_our_adapter_files_use_peft_names(tmp_path):
    model, _ = lora_files.load_adapters(PEFT_FIXTURE / "adapter")
    model.lora_base = {"base": "somewhere", "fingerprint": "0"}
    lora_files.save_adapters(model, tmp_path)
    assert set(read_safetensors(tmp_path / "adapter_model.safetensors")) == set(
        read_safetensors(PEFT_FIXTURE / "adapter" / "adapter_model.safetensors"))
    ours, peft = (json.loads((d / "adapter_config.json").read_text()) for d in (tmp_path, PEFT_FIXTURE / "adapter"))
    for key in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "fan_in_fan_out", "bias"):
        assert ours[key] == peft[key], key


def test_two_ranks_with_zero1_train_the_adapters_as_one_process():
    """LoRA under two in-process ranks and ZeRO-1 (the moments of the adapters sharded): the adapters after
    two steps are those of one process, to float rounding (the ranks' sums add in another order)."""
    from tests.fake_world import FakeWorld

    rng = np.random.default_rng(6)
    X, Y = rng.integers(0, 37, (2, 2, 16)), rng.integers(0, 37, (2, 2, 16))

    def train(comm=None):
        model = adapted(tiny(dropout=0.1), targets=ALL, lora_dropout=0.1)
        parallel = DataParallel(model, workers=1, comm=comm)
        optimizer = FlatAdamW(model.trainable, 1e-2, comm=comm, zero=True)
        for it in range(2):
            _, grads = parallel.forward_backward(X, Y, dropout_key=(7, it), into=optimizer.grad_views)
            optimizer.step(grads, lr=1e-2, grad_clip=1.0)
        parallel.close()
        return {k: v.copy() for k, v in model.adapters.items()}

    alone = train()
    for ranked in FakeWorld(2).run(train):
        for name, value in alone.items():
            np.testing.assert_allclose(ranked[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_lora_under_the_strict_device_stand_in(cupy, monkeypatch):
    """The adapters on (fake, strict) CuPy: no implicit host trip in a step, the CPU's loss and gradients."""
    from minigpt.backend import to_device, to_host
    from minigpt.parallel import RowRNG
    from tests.device_standin import EVENTS

    monkeypatch.setattr(RowRNG, "COUNTER_BASED", ("cpu", "gpu"))  # the GPU's dropout streams, by their NumPy twin
    rng = np.random.default_rng(8)
    X, Y = rng.integers(0, 37, (2, 2, 16)), rng.integers(0, 37, (2, 2, 16))
    results = []
    for device in ("cpu", "gpu"):
        model = GPT(tiny(dropout=0.1), seed=0, device=device)
        cpu = GPT(tiny(dropout=0.1), seed=0)
        for name, value in cpu.params.items():
            model.params[name][...] = to_device(value, device)
        add_adapters(model, lora.LoraConfig(rank=4, dropout=0.1, targets=ALL), base="t", seed=1)
        for name, a in model.adapters.items():
            a[...] = to_device(np.full(a.shape, 0.01, dtype=np.float32), device)
        model.recompute = True
        parallel = DataParallel(model, workers=1)
        EVENTS.clear()
        loss, grads = parallel.forward_backward(X, Y, dropout_key=(2, 0))
        if device == "gpu":
            assert not [e for e in EVENTS if e[0] in ("sync", "d2h")]
        results.append((float(to_host(loss)), {k: to_host(v) for k, v in grads.items()}))
    (loss, grads), (gpu_loss, gpu_grads) = results
    assert gpu_loss == pytest.approx(loss, rel=1e-5)
    for name in grads:
        np.testing.assert_allclose(gpu_grads[name], grads[name], rtol=1e-4, atol=1e-6, err_msg=name)
