"""The whole GPT: finite-difference gradients, Hugging Face layout, init, KV cache."""

import gc
import math
import tracemalloc

import numpy as np
import pytest

from minigpt.backend import to_host
from minigpt.errors import MinigptError
from minigpt.model import GPT, GPTConfig, param_shapes
from tests.conftest import numerical_grad, rel_error

TINY = dict(n_layer=2, n_head=2, n_embd=8, block_size=8, vocab_size=11)


def tiny_model(device, dropout=0.0, seed=0, fast=True, **overrides):
    model = GPT(GPTConfig(**{**TINY, "dropout": dropout, **overrides}), dtype="float64", device=device, seed=seed,
                fast=fast)
    rng = np.random.default_rng(seed + 1)
    for name, p in model.params.items():
        if name.endswith(".bias") or ".ln_" in name:  # non-trivial LayerNorm and bias values
            p += model.xp.asarray(rng.standard_normal(p.shape) * 0.1)
        else:  # weights large enough that attention is far from uniform and gradients are not tiny
            p *= 15.0
    return model


def model_gradcheck(model, idx, targets, entries_per_tensor=12, seed=0):
    """Central differences of the loss for a sample of entries of every parameter.

    Before each forward the dropout RNG is reseeded, so every evaluation sees the
    same dropout masks (a fixed mask), which makes the loss a smooth function.
    """
    xp = model.xp

    def loss():
        model.rng = xp.random.default_rng(1234)
        return model.forward(idx, targets)[1]

    loss()
    grads = model.backward()
    assert set(grads) == set(model.params)
    pick = np.random.default_rng(seed)
    for name, p in model.params.items():
        assert grads[name].shape == p.shape, name
        n = min(p.size, entries_per_tensor)
        indices = pick.choice(p.size, size=n, replace=False)
        numeric = numerical_grad(loss, p, indices=indices)
        err = rel_error(to_host(grads[name]).ravel()[indices], numeric.ravel()[indices])
        assert err <= 1e-6, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_gradcheck_full_model(device, fast):
    """On the layers the model runs (minigpt.fast) and on the plain ones (minigpt.nn)."""
    model = tiny_model(device, fast=fast)
    rng = np.random.default_rng(0)
    idx = model.xp.asarray(rng.integers(0, 11, (2, 8)))
    targets = model.xp.asarray(rng.integers(0, 11, (2, 8)))
    model_gradcheck(model, idx, targets)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_gradcheck_dropout_fixed_mask_ignored_targets_short_batch_of_one(device, fast):
    model = tiny_model(device, dropout=0.2, seed=3, fast=fast).train()
    rng = np.random.default_rng(1)
    idx = model.xp.asarray(rng.integers(0, 11, (1, 5)))  # batch 1, T = 5 < block_size = 8
    targets = model.xp.asarray([[3, -1, 7, -1, 0]])  # ignored targets
    model_gradcheck(model, idx, targets, seed=1)


def test_tied_head_gradient_adds_both_uses(device):
    """wte's gradient = embedding scatter-add + head's dlogits^T x: check rows never used as inputs."""
    model = tiny_model(device)
    idx = model.xp.asarray([[1, 2, 3]])  # tokens 0 and 4..10 are never embedded
    model.forward(idx, idx)
    g = to_host(model.backward()["transformer.wte.weight"])
    assert np.abs(g[5]).max() > 0  # only the head reaches row 5: tying is what makes it non-zero


def test_params_named_and_shaped_like_hugging_face():
    config = GPTConfig.preset("gpt2")
    shapes = param_shapes(config)
    assert shapes["transformer.wte.weight"] == (50257, 768)
    assert shapes["transformer.wpe.weight"] == (1024, 768)
    assert shapes["transformer.h.11.attn.c_attn.weight"] == (768, 2304)
    assert shapes["transformer.h.0.mlp.c_proj.weight"] == (3072, 768)
    assert "lm_head.weight" not in shapes
    n = sum(math.prod(s) for s in shapes.values())
    assert n == 124_439_808  # GPT-2 small, tied head counted once


def test_presets():
    assert [(GPTConfig.preset(n).n_layer, GPTConfig.preset(n).n_embd) for n in GPTConfig.PRESETS] == [
        (12, 768), (24, 1024), (36, 1280), (48, 1600)]
    with pytest.raises(MinigptError, match="unknown model"):
        GPTConfig.preset("gpt3")


@pytest.mark.parametrize("bad", [dict(n_embd=10, n_head=3), dict(n_layer=0), dict(dropout=1.0), dict(block_size=-1)])
def test_config_rejects_impossible_values(bad):
    with pytest.raises(MinigptError):
        GPTConfig(**{**TINY, **bad})


def test_init_statistics():
    config = GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=64, vocab_size=1000)
    p = GPT(config, seed=0).params
    assert abs(float(p["transformer.wte.weight"].std()) - 0.02) < 5e-4
    assert abs(float(p["transformer.h.0.attn.c_attn.weight"].std()) - 0.02) < 5e-4
    proj = 0.02 / math.sqrt(2 * 8)
    for name in ("transformer.h.3.attn.c_proj.weight", "transformer.h.3.mlp.c_proj.weight"):
        assert abs(float(p[name].std()) - proj) < 0.05 * proj, name
    assert not p["transformer.h.0.attn.c_attn.bias"].any()
    assert (p["transformer.ln_f.weight"] == 1).all() and not p["transformer.ln_f.bias"].any()
    assert p["transformer.wte.weight"].dtype == np.float32


def test_same_seed_same_model_and_in_place_writes_change_it():
    a, b = GPT(GPTConfig(**TINY), seed=5), GPT(GPTConfig(**TINY), seed=5)
    idx = np.array([[1, 2, 3]])
    la, lb = a.forward(idx)[0], b.forward(idx)[0]
    np.testing.assert_array_equal(la, lb)
    b.params["transformer.ln_f.bias"][:] = 1.0
    assert not np.allclose(b.forward(idx)[0], la)


def test_no_bias_model(device):
    model = tiny_model(device, bias=False)
    assert not any(k.endswith(".bias") for k in model.params)
    idx = model.xp.asarray(np.random.default_rng(2).integers(0, 11, (2, 6)))
    model_gradcheck(model, idx, idx, entries_per_tensor=6)


def test_loss_none_without_targets_and_backward_needs_targets(device):
    model = tiny_model(device)
    logits, loss = model.forward(model.xp.asarray([[1, 2]]))
    assert loss is None and logits.shape == (1, 2, 11)
    with pytest.raises(RuntimeError):
        model.backward()


def test_eval_mode_is_deterministic_and_train_mode_drops(device):
    model = tiny_model(device, dropout=0.5)
    idx = model.xp.asarray([[1, 2, 3, 4]])
    model.eval()
    np.testing.assert_array_equal(to_host(model.forward(idx)[0]), to_host(model.forward(idx)[0]))
    model.train()
    assert not np.allclose(to_host(model.forward(idx)[0]), to_host(model.forward(idx)[0]))


def test_sequence_longer_than_block_size_is_refused():
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(ValueError, match="block_size"):
        model.forward(np.zeros((1, 9), dtype=np.int64))


def test_kv_cache_equals_full_forward(device):
    model = tiny_model(device).eval()
    xp = model.xp
    idx = xp.asarray(np.random.default_rng(4).integers(0, 11, (3, 8)))
    full, _ = model.forward(idx)
    cache = model.new_kv_cache()
    pieces = [model.forward_cached(idx[:, :3], cache)]  # prefill 3 tokens
    for t in range(3, 8):  # then one at a time
        pieces.append(model.forward_cached(idx[:, t : t + 1], cache))
    cached = xp.concatenate(pieces, axis=1)
    assert cache.length == 8
    assert rel_error(cached, full) <= 1e-10
    np.testing.assert_allclose(to_host(cached), to_host(full), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="block_size"):
        model.forward_cached(idx[:, :1], cache)


def test_kv_cache_last_only(device):
    model = tiny_model(device).eval()
    idx = model.xp.asarray([[1, 5, 2, 9]])
    last = model.forward_cached(idx, model.new_kv_cache(), last_only=True)
    assert last.shape == (1, 1, 11)
    np.testing.assert_allclose(to_host(last)[0, 0], to_host(model.forward(idx)[0])[0, -1], rtol=1e-12)


def test_num_params():
    model = GPT(GPTConfig(**TINY))
    assert model.num_params() == sum(math.prod(s) for s in param_shapes(model.config).values())
    assert model.num_params(non_embedding=True) == model.num_params() - 8 * 8


def test_flops_per_token_counts_every_weight_product():
    """6 per weight (forward 2, backward 4; wpe is a lookup, not a product) + 6 L C T for causal attention."""
    C, L, V, T = 48, 3, 101, 32
    model = GPT(GPTConfig(n_layer=L, n_head=4, n_embd=C, block_size=64, vocab_size=V))
    weights = 12 * L * C * C + 13 * L * C + 2 * C + V * C  # blocks (matmuls, biases, LayerNorms), ln_f, wte
    assert model.flops_per_token(T) == 6 * weights + 6 * L * C * T


# -- memory: a forward keeps activations only for a backward that will come --------------------


def test_forward_keeps_activations_only_for_a_backward():
    model = tiny_model("cpu")
    idx = np.asarray([[1, 2, 3, 4]])
    model.eval()
    model.forward(idx, idx)  # evaluation: nothing kept
    with pytest.raises(RuntimeError, match="keep_for_backward=True"):
        model.backward()
    model.forward(idx, idx, keep_for_backward=True)  # eval mode (no dropout), kept on request
    kept = model.backward()
    model.train()
    model.forward(idx, idx, keep_for_backward=False)
    with pytest.raises(RuntimeError, match="the last forward kept none"):
        model.backward()
    model.forward(idx, idx)  # training mode keeps by default; dropout is 0, so the gradients are eval's
    for name, g in model.backward().items():
        np.testing.assert_array_equal(g, kept[name], err_msg=name)


def test_forwards_never_hold_two_sets_of_activations():
    """Two evaluation forwards, or a training forward after an evaluation, peak at one forward's memory.

    Issue 11.10: a forward with targets kept every layer's activations even in
    evaluation, and the next forward built a new set while the old one was still
    referenced, so it peaked at about twice the memory it needed.
    """
    config = GPTConfig(n_layer=4, n_head=2, n_embd=64, block_size=64, vocab_size=97)
    model = GPT(config, seed=0)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 97, (4, 64)), rng.integers(0, 97, (4, 64))
    tracemalloc.start()  # it sees NumPy's array buffers
    try:
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]  # the parameters and nothing else

        def peak(forward):
            """Peak memory of `forward()` above `base`, and what it leaves held."""
            tracemalloc.reset_peak()
            forward()
            current, top = tracemalloc.get_traced_memory()
            return top - base, current - base

        model.train()
        train_peak, train_held = peak(lambda: model.forward(idx, targets))
        model.backward()
        model.eval()
        eval_peak, eval_held = peak(lambda: model.forward(idx, targets))
        second_eval_peak, _ = peak(lambda: model.forward(idx, targets))
        model.train()
        train_after_eval_peak, _ = peak(lambda: model.forward(idx, targets))
        train_again_peak, _ = peak(lambda: model.forward(idx, targets))  # no backward in between
    finally:
        tracemalloc.stop()
    assert train_held > 0.5 * train_peak  # the activations a training forward keeps for backward ...
    assert eval_held < 0.05 * train_peak  # ... and an evaluation forward does not
    assert eval_peak < train_peak
    assert second_eval_peak < 1.1 * eval_peak
    assert train_after_eval_peak < 1.1 * train_peak
    assert train_again_peak < 1.1 * train_peak


def test_a_forward_without_logits_gives_the_same_loss_and_gradients():
    """return_logits=False (what DataParallel and evaluation use): None for the logits, the same loss and grads."""
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11), dtype="float64", seed=0)
    rng = np.random.default_rng(5)
    idx, targets = rng.integers(0, 11, (3, 8)), rng.integers(0, 11, (3, 8))
    targets[1, :4] = -1
    logits, loss = model.forward(idx, targets)
    grads = model.backward(0.5)
    none, loss_only = model.forward(idx, targets, return_logits=False)
    assert none is None and logits.shape == (3, 8, 11)
    assert float(loss_only) == float(loss)
    for name, g in model.backward(0.5).items():
        np.testing.assert_allclose(g, grads[name], rtol=1e-13, atol=1e-16, err_msg=name)
