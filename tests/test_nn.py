"""Finite-difference gradient checks (float64, central differences) for every layer in minigpt.nn.

Each check builds a random scalar loss L = sum(out * W) with a fixed random W,
so dL/dout = W, and compares every analytic input and parameter gradient with
central differences of L.
"""

import math
import tracemalloc

import numpy as np
import pytest

from minigpt import gradcheck
from minigpt.backend import get_xp, to_host
from minigpt import fast
from minigpt.nn import attention, block, cross_entropy, dropout, embedding, gelu, layernorm, linear, lm_head, mlp, softmax
from tests.conftest import numerical_grad, rel_error

TOL = 1e-6


def setup(device, seed=0):
    xp = get_xp(device)
    rng = np.random.default_rng(seed)
    return xp, rng, (lambda *shape, scale=1.0: xp.asarray(rng.standard_normal(shape) * scale))


def check(forward, inputs, backward_of, out_weight):
    """Compare backward_of(out_weight) with finite differences of sum(forward() * out_weight) for each input."""
    for row in gradcheck.compare("", forward, backward_of, inputs, out_weight):
        assert row.error <= TOL, f"{row.name}: relative error {row.error:.1e}"


def test_linear(device):
    xp, rng, randn = setup(device)
    x, w, b = randn(2, 3, 4), randn(4, 5), randn(5)
    dout = randn(2, 3, 5)

    def backward_of(d):
        dx, g = linear.backward(d, linear.forward(x, w, b)[1])
        return {"x": dx, "w": g["weight"], "b": g["bias"]}

    check(lambda: linear.forward(x, w, b)[0], {"x": x, "w": w, "b": b}, backward_of, dout)


def test_linear_layout_is_x_at_w_plus_b(device):
    xp, rng, randn = setup(device)
    x, w, b = randn(3, 4), randn(4, 2), randn(2)
    y, _ = linear.forward(x, w, b)
    np.testing.assert_allclose(to_host(y), to_host(x) @ to_host(w) + to_host(b), rtol=1e-12)


def test_layernorm(device):
    xp, rng, randn = setup(device)
    x, w, b = randn(2, 3, 6, scale=3.0), randn(6), randn(6)
    dout = randn(2, 3, 6)

    def backward_of(d):
        dx, g = layernorm.backward(d, layernorm.forward(x, w, b)[1])
        return {"x": dx, "w": g["weight"], "b": g["bias"]}

    check(lambda: layernorm.forward(x, w, b)[0], {"x": x, "w": w, "b": b}, backward_of, dout)


def test_layernorm_matches_definition(device):
    xp, rng, randn = setup(device)
    x = to_host(randn(4, 7, scale=5.0)) + 3.0
    y, _ = layernorm.forward(xp.asarray(x), xp.ones(7), xp.zeros(7))
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)  # biased variance
    np.testing.assert_allclose(to_host(y), expected, rtol=1e-10, atol=1e-12)


def test_gelu(device):
    xp, rng, randn = setup(device)
    x = randn(3, 5, scale=2.0)
    dout = randn(3, 5)
    check(lambda: gelu.forward(x)[0], {"x": x}, lambda d: {"x": gelu.backward(d, x)[0]}, dout)


def test_gelu_matches_formula_and_survives_large_inputs(device):
    xp, rng, randn = setup(device)
    x = np.array([-1e4, -30.0, -3.0, -0.5, 0.0, 0.5, 3.0, 30.0, 1e4])
    expected = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(to_host(gelu.forward(xp.asarray(x))[0]), expected, rtol=1e-12, atol=1e-300)
    with np.errstate(all="raise"):  # no overflow in the backward for huge |x|
        dx = to_host(gelu.backward(xp.ones(9), xp.asarray(x))[0])
    assert np.all(np.isfinite(dx))
    np.testing.assert_allclose(dx[[0, -1]], [0.0, 1.0], atol=1e-12)


# -- the NumPy twins of GELU and the causal softmax (the CUDA twins: tests/test_kernels.py)


def gelu_reference(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def softmax_reference(scores, scale):
    """Row by row with Python loops: query i sees keys j <= i + Tk - Tq."""
    t_q, t_k = scores.shape[-2:]
    rows = scores.reshape(-1, t_q, t_k)
    out = np.zeros_like(rows)
    for b in range(rows.shape[0]):
        for i in range(t_q):
            visible = i + t_k - t_q + 1
            z = scale * rows[b, i, :visible]
            e = np.exp(z - z.max())
            out[b, i, :visible] = e / e.sum()
    return out.reshape(scores.shape)


def test_gelu_numpy_twin_forward_matches_formula():
    x = np.random.default_rng(0).standard_normal((3, 7, 5)) * 4
    np.testing.assert_allclose(fast.gelu.forward_numpy(x), gelu_reference(x), rtol=1e-12, atol=1e-15)


def test_gelu_numpy_twin_backward_matches_finite_differences():
    x = np.random.default_rng(1).standard_normal((4, 9)) * 3
    dout = np.random.default_rng(2).standard_normal(x.shape)
    h = 1e-6
    numeric = (gelu_reference(x + h) - gelu_reference(x - h)) / (2 * h) * dout
    np.testing.assert_allclose(fast.gelu.backward_numpy(dout, x), numeric, rtol=1e-7, atol=1e-9)


def test_gelu_numpy_twin_backward_is_finite_for_huge_inputs():
    x = np.array([-1e4, -50.0, 50.0, 1e4], dtype=np.float32)
    dx = fast.gelu.backward_numpy(np.ones_like(x), x)
    np.testing.assert_array_equal(dx, [0.0, 0.0, 1.0, 1.0])


@pytest.mark.parametrize("t_q, t_k", [(1, 1), (5, 5), (3, 8), (1, 33)])
def test_causal_softmax_forward_matches_reference(t_q, t_k):
    scores = np.random.default_rng(3).standard_normal((2, 3, t_q, t_k)) * 5
    probs = fast.softmax.forward_numpy(scores, 0.37)
    np.testing.assert_allclose(probs, softmax_reference(scores, 0.37), rtol=1e-12, atol=1e-15)
    masked = softmax.causal_mask(np, t_q, t_k)
    assert np.all(probs[..., masked] == 0.0)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-12)


def test_causal_softmax_forward_is_stable_for_huge_scores():
    scores = np.array([[[1e4, 0.0], [1e4, 2e4]]], dtype=np.float32)
    probs = fast.softmax.forward_numpy(scores, 1.0)
    np.testing.assert_array_equal(probs, [[[1.0, 0.0], [0.0, 1.0]]])


def test_causal_softmax_backward_matches_finite_differences():
    rng = np.random.default_rng(4)
    scores = rng.standard_normal((2, 4, 6))
    weights = rng.standard_normal(scores.shape)  # L = sum(weights * probs), so dL/dprobs = weights
    scale = 0.5
    probs = fast.softmax.forward_numpy(scores, scale)
    analytic = fast.softmax.backward_numpy(weights, probs, scale)
    numeric = np.zeros_like(scores)
    h = 1e-6
    for index in np.ndindex(scores.shape):
        bumped = scores.copy()
        bumped[index] += h
        up = np.sum(weights * fast.softmax.forward_numpy(bumped, scale))
        bumped[index] -= 2 * h
        down = np.sum(weights * fast.softmax.forward_numpy(bumped, scale))
        numeric[index] = (up - down) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)
    assert np.all(analytic[..., softmax.causal_mask(np, 4, 6)] == 0.0)


def test_dropout_fixed_mask(device):
    xp, rng, randn = setup(device)
    x, dout, p = randn(4, 6), randn(4, 6), 0.3

    def fwd():
        return dropout.forward(x, p, xp.random.default_rng(7), training=True)[0]

    def backward_of(d):
        return {"x": dropout.backward(d, dropout.forward(x, p, xp.random.default_rng(7), training=True)[1])[0]}

    check(fwd, {"x": x}, backward_of, dout)


def test_dropout_statistics_and_eval(device):
    xp, rng, randn = setup(device)
    x = xp.ones((200, 500))
    y, _ = dropout.forward(x, 0.25, xp.random.default_rng(0), training=True)
    y = to_host(y)
    assert set(np.unique(y)) == {0.0, 1.0 / 0.75}  # inverted: survivors scaled by 1/(1-p)
    assert abs((y == 0).mean() - 0.25) < 0.01
    assert abs(y.mean() - 1.0) < 0.01
    same, cache = dropout.forward(x, 0.25, xp.random.default_rng(0), training=False)
    assert same is x and cache is None


def test_embedding(device):
    xp, rng, randn = setup(device)
    wte, wpe = randn(5, 3), randn(8, 3)
    idx = xp.asarray([[1, 4, 1, 1], [0, 1, 4, 2]])  # repeated ids: the backward must accumulate
    dout = randn(2, 4, 3)

    def backward_of(d):
        _, g = embedding.backward(d, embedding.forward(idx, wte, wpe)[1])
        return {"wte": g["wte"], "wpe": g["wpe"]}

    check(lambda: embedding.forward(idx, wte, wpe)[0], {"wte": wte, "wpe": wpe}, backward_of, dout)


def test_embedding_with_offset(device):
    xp, rng, randn = setup(device)
    wte, wpe = randn(5, 3), randn(8, 3)
    idx = xp.asarray([[2, 3]])
    x, _ = embedding.forward(idx, wte, wpe, offset=5)
    np.testing.assert_array_equal(to_host(x)[0, 1], to_host(wte)[3] + to_host(wpe)[6])


def test_lm_head(device):
    xp, rng, randn = setup(device)
    x, wte = randn(2, 3, 4), randn(7, 4)
    dout = randn(2, 3, 7)

    def backward_of(d):
        dx, g = lm_head.backward(d, lm_head.forward(x, wte)[1])
        return {"x": dx, "wte": g["weight"]}

    check(lambda: lm_head.forward(x, wte)[0], {"x": x, "wte": wte}, backward_of, dout)


@pytest.mark.parametrize("t_q,t_k", [(5, 5), (3, 7), (1, 4)])
def test_causal_softmax_mask(device, t_q, t_k):
    xp, rng, randn = setup(device)
    probs = to_host(softmax.forward(randn(2, t_q, t_k), 0.5)[0])
    for i in range(t_q):
        visible = i + t_k - t_q + 1
        assert np.all(probs[:, i, visible:] == 0.0)
        assert np.all(probs[:, i, :visible] > 0.0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("t_q,t_k", [(5, 5), (3, 7)])
def test_causal_softmax(device, t_q, t_k):
    xp, rng, randn = setup(device)
    scores, dout = randn(2, 3, t_q, t_k, scale=2.0), randn(2, 3, t_q, t_k)
    check(lambda: softmax.forward(scores, 0.7)[0], {"scores": scores},
          lambda d: {"scores": softmax.backward(d, softmax.forward(scores, 0.7)[1])[0]}, dout)


ATTENTION_PATHS = {  # name: (forward, backward, QUERY_BLOCK of the fast path)
    "textbook": (attention.forward, attention.backward, 128),
    "blocked": (fast.attention.forward, fast.attention.backward, 128),
    "blocked-2": (fast.attention.forward, fast.attention.backward, 2),  # T = 5 as rows 0-1, 2-3, 4
}


@pytest.mark.parametrize("path", ATTENTION_PATHS)
@pytest.mark.parametrize("attn_pdrop", [0.0, 0.2])
def test_attention(device, attn_pdrop, path, monkeypatch):
    forward, backward, query_block = ATTENTION_PATHS[path]
    monkeypatch.setattr(fast.attention, "QUERY_BLOCK", query_block)
    xp, rng, randn = setup(device)
    B, T, C, H = 2, 5, 6, 2
    x = randn(B, T, C)
    w_attn, b_attn, w_proj, b_proj = randn(C, 3 * C, scale=0.5), randn(3 * C), randn(C, C, scale=0.5), randn(C)
    dout = randn(B, T, C)

    def fwd():
        return forward(x, w_attn, b_attn, w_proj, b_proj, H, attn_pdrop, xp.random.default_rng(3), True)

    def backward_of(d):
        dx, g = backward(d, fwd()[1])
        return {"x": dx, "w_attn": g["c_attn.weight"], "b_attn": g["c_attn.bias"],
                "w_proj": g["c_proj.weight"], "b_proj": g["c_proj.bias"]}

    inputs = {"x": x, "w_attn": w_attn, "b_attn": b_attn, "w_proj": w_proj, "b_proj": b_proj}
    check(lambda: fwd()[0], inputs, backward_of, dout)


@pytest.mark.parametrize("query_block", [3, 7, 128])  # several blocks, one block of exactly T, one block of more
def test_blocked_attention_equals_the_textbook_attention(device, query_block, monkeypatch):
    """The fast path (keys after each block of queries never scored) gives the textbook output and gradients."""
    monkeypatch.setattr(fast.attention, "QUERY_BLOCK", query_block)
    xp, rng, randn = setup(device)
    B, T, C, H = 2, 7, 8, 2
    x, dout = randn(B, T, C), randn(B, T, C)
    params = (randn(C, 3 * C), randn(3 * C), randn(C, C), randn(C))
    out, cache = attention.forward(x, *params, H)
    dx, grads = attention.backward(dout, cache)
    out_blocked, cache = fast.attention.forward(x, *params, H)
    dx_blocked, grads_blocked = fast.attention.backward(dout, cache)
    np.testing.assert_allclose(to_host(out_blocked), to_host(out), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_host(dx_blocked), to_host(dx), rtol=1e-12, atol=1e-12)
    assert list(grads_blocked) == list(grads) == ["c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"]
    for name, g in grads.items():
        np.testing.assert_allclose(to_host(grads_blocked[name]), to_host(g), rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("forward", [attention.forward, fast.attention.forward])
def test_attention_is_causal(device, forward, monkeypatch):
    """Changing a later token never changes an earlier output."""
    monkeypatch.setattr(fast.attention, "QUERY_BLOCK", 4)
    xp, rng, randn = setup(device)
    B, T, C, H = 1, 6, 8, 2
    x = randn(B, T, C)
    params = (randn(C, 3 * C), randn(3 * C), randn(C, C), randn(C))
    y1, _ = forward(x, *params, H)
    x2 = x.copy()
    x2[:, 4] += 1.0
    y2, _ = forward(x2, *params, H)
    np.testing.assert_array_equal(to_host(y1)[:, :4], to_host(y2)[:, :4])
    assert not np.allclose(to_host(y1)[:, 4:], to_host(y2)[:, 4:])


def test_mlp(device):
    xp, rng, randn = setup(device)
    C = 4
    x = randn(2, 3, C)
    w_fc, b_fc, w_proj, b_proj = randn(C, 4 * C), randn(4 * C), randn(4 * C, C), randn(C)
    dout = randn(2, 3, C)

    def backward_of(d):
        dx, g = mlp.backward(d, mlp.forward(x, w_fc, b_fc, w_proj, b_proj)[1])
        return {"x": dx, "w_fc": g["c_fc.weight"], "b_fc": g["c_fc.bias"], "w_proj": g["c_proj.weight"], "b_proj": g["c_proj.bias"]}

    check(lambda: mlp.forward(x, w_fc, b_fc, w_proj, b_proj)[0],
          {"x": x, "w_fc": w_fc, "b_fc": b_fc, "w_proj": w_proj, "b_proj": b_proj}, backward_of, dout)


@pytest.mark.parametrize("p_drop", [0.0, 0.1])
def test_block(device, p_drop):
    xp, rng, randn = setup(device)
    C, H = 4, 2
    shapes = {
        "ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
        "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,),
    }
    p = {k: randn(*s, scale=0.5) for k, s in shapes.items()}
    x, dout = randn(2, 3, C), randn(2, 3, C)

    def fwd():
        return block.forward(x, p, H, p_drop, xp.random.default_rng(11), True)

    def backward_of(d):
        dx, g = block.backward(d, fwd()[1])
        return {"x": dx, **g}

    check(lambda: fwd()[0], {"x": x, **p}, backward_of, dout)


def test_cross_entropy_with_ignored_targets(device):
    xp, rng, randn = setup(device)
    logits = randn(2, 4, 7, scale=2.0)
    targets = xp.asarray([[1, -1, 6, 0], [-1, 3, 3, 2]])

    def loss():
        return cross_entropy.forward(logits, targets)[0]

    cache = cross_entropy.forward(logits, targets)[1]
    dlogits, grads = cross_entropy.backward(1.0, cache)
    assert grads == {}
    assert rel_error(dlogits, numerical_grad(loss, logits)) <= TOL
    again, _ = cross_entropy.backward(1.0, cache)  # the cache is left as it was: the same gradient twice
    np.testing.assert_array_equal(to_host(again), to_host(dlogits))
    # ignored rows get no gradient, and the mean is over the 6 valid positions
    assert not to_host(dlogits)[0, 1].any() and not to_host(dlogits)[1, 0].any()
    z, y = to_host(logits).reshape(-1, 7), to_host(targets).ravel()
    lse = np.log(np.exp(z).sum(1))
    expected = np.mean([lse[n] - z[n, y[n]] for n in range(8) if y[n] != -1])
    np.testing.assert_allclose(float(to_host(loss())), expected, rtol=1e-12)


def test_cross_entropy_in_place_equals_cross_entropy_and_allocates_no_logits_sized_array():
    """forward_in_place/backward_in_place: the same loss and gradient (float64), in the logits' own memory."""
    rng = np.random.default_rng(4)
    N, V = 64, 5000
    logits = rng.standard_normal((2, N // 2, V)) * 3
    targets = rng.integers(0, V, (2, N // 2))
    targets[0, :5] = -1
    loss, cache = cross_entropy.forward(logits, targets)  # the plain layer
    dlogits, _ = cross_entropy.backward(0.7, cache)
    mine = logits.copy()
    tracemalloc.start()
    loss_in_place, cache_in_place = fast.cross_entropy.forward_in_place(mine, targets)
    dlogits_in_place, _ = fast.cross_entropy.backward_in_place(0.7, cache_in_place)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < mine.nbytes / 4  # a few (N,) arrays, never an (N, V) one
    assert np.shares_memory(dlogits_in_place, mine)
    np.testing.assert_allclose(float(loss_in_place), float(loss), rtol=1e-14)
    np.testing.assert_allclose(dlogits_in_place, dlogits, rtol=1e-14, atol=1e-18)
    with pytest.raises(ValueError, match="C-contiguous"):
        fast.cross_entropy.forward_in_place(logits.transpose(1, 0, 2), targets.T)


# -- the contract of minigpt/nn/__init__.py ---------------------------------------------------------


def arrays_in(cache):
    """Every array inside a (nested) cache of tuples, lists and dicts."""
    if isinstance(cache, (tuple, list)):
        return [a for item in cache for a in arrays_in(item)]
    if isinstance(cache, dict):
        return [a for item in cache.values() for a in arrays_in(item)]
    return [cache] if hasattr(cache, "shape") and hasattr(cache, "dtype") else []


def test_every_backward_returns_dx_and_grads_and_leaves_its_cache(device):
    xp, rng, randn = setup(device)
    C, H = 4, 2
    x = randn(2, 3, C)
    block_params = {
        "ln_1.weight": randn(C), "ln_1.bias": randn(C), "attn.c_attn.weight": randn(C, 3 * C), "attn.c_attn.bias": randn(3 * C),
        "attn.c_proj.weight": randn(C, C), "attn.c_proj.bias": randn(C), "ln_2.weight": randn(C), "ln_2.bias": randn(C),
        "mlp.c_fc.weight": randn(C, 4 * C), "mlp.c_fc.bias": randn(4 * C), "mlp.c_proj.weight": randn(4 * C, C),
        "mlp.c_proj.bias": randn(C),
    }
    attn = (block_params["attn.c_attn.weight"], block_params["attn.c_attn.bias"],
            block_params["attn.c_proj.weight"], block_params["attn.c_proj.bias"], H, 0.2, xp.random.default_rng(0), True)
    mlp_params = [block_params[f"mlp.{name}"] for name in ("c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias")]
    layers = {
        "linear": (linear, (x, randn(C, 5), randn(5))),
        "layernorm": (layernorm, (x, randn(C), randn(C))),
        "gelu": (gelu, (x,)),
        "mlp": (mlp, (x, *mlp_params)),
        "softmax": (softmax, (randn(2, 3, 3), 0.5)),
        "dropout": (dropout, (x, 0.5, xp.random.default_rng(0), True)),
        "attention": (attention, (x, *attn)),
        "embedding": (embedding, (xp.asarray([[1, 2, 1]]), randn(5, C), randn(8, C))),
        "lm_head": (lm_head, (x, randn(7, C))),
        "cross_entropy": (cross_entropy, (randn(2, 3, 7), xp.asarray([[1, -1, 6], [0, 3, 3]]))),
        "block": (block, (x, block_params, H, 0.2, xp.random.default_rng(0), True)),
    }
    for name, (module, args) in layers.items():
        out, cache = module.forward(*args)
        before = [to_host(a).copy() for a in arrays_in(cache)]
        dout = xp.asarray(rng.standard_normal(out.shape))
        dx, grads = module.backward(dout, cache)
        assert isinstance(grads, dict), name
        assert dx is None if module is embedding else dx.shape == args[0].shape, name
        for kept, now in zip(before, arrays_in(cache)):
            np.testing.assert_array_equal(to_host(now), kept, err_msg=f"{name}.backward changed its cache")
    for name, (module, args) in layers.items():  # the fast twins, where there is one
        if name in ("gelu", "softmax", "layernorm", "cross_entropy", "attention"):
            module = getattr(fast, name)
            out, cache = module.forward(*args)
            before = [to_host(a).copy() for a in arrays_in(cache)]
            dx, grads = module.backward(xp.asarray(rng.standard_normal(out.shape)), cache)
            assert isinstance(grads, dict) and dx.shape == args[0].shape, name
            for kept, now in zip(before, arrays_in(cache)):
                np.testing.assert_array_equal(to_host(now), kept, err_msg=f"fast.{name}.backward changed its cache")
