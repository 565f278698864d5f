"""Gradient checks: every layer's backward against central differences of its forward, in float64.

For a layer out = f(x, params), take a fixed random array W shaped like out and
the scalar L = sum(out * W). Then dL/dout = W, so backward(W, cache) must return
dL/dx and dL/dparam. Each entry is compared with a central difference

    dL/dx_i ~ (L(x + h e_i) - L(x - h e_i)) / 2h        (error O(h^2): ~1e-10 for h = 1e-5)

and the two arrays with their relative error max|a - n| / max(max|a|, max|n|).
A correct backward is within about 1e-9 in float64; a wrong line is off by
1e-3 or far more. Dropout is made deterministic by drawing the same mask on
every forward (its generator is reseeded), so L is a smooth function of x.

`check(layer)` runs one layer's check (`check()` all of them, in the reading
order of minigpt/nn/README.md) and returns its rows; scripts/gradcheck.py
prints them, and tests/conftest.py uses numerical_grad and rel_error.
"""

from typing import NamedTuple

import numpy as np

from minigpt import fast
from minigpt.backend import to_host
from minigpt.model import GPT, GPTConfig, param_shapes
from minigpt.nn import (attention, block, cross_entropy, dropout, embedding, gelu, gelu_erf, layernorm, linear, lm_head,
                        lora, mlp, relu2, rmsnorm, rotary, softmax, swiglu)

TOLERANCE = 1e-6  # the largest relative error a row may have


def numerical_grad(f, x, h=1e-5, indices=None):
    """Central differences (f(x+h) - f(x-h)) / 2h of scalar f() w.r.t. array x, changed in place.

    x may be a NumPy or a CuPy array (entries are perturbed where x lives); the
    result is a NumPy array. `indices` (flat positions) limits the check to some
    entries of a large x; the other entries of the result are NaN.
    """
    flat = x.reshape(-1)
    grad = np.full(flat.shape, np.nan)
    for i in range(flat.size) if indices is None else indices:
        old = float(flat[i])
        flat[i] = old + h
        f_plus = float(f())
        flat[i] = old - h
        f_minus = float(f())
        flat[i] = old
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad.reshape(x.shape)


def rel_error(analytic, numeric):
    """max |a - n| / max(|a|, |n|) over the vector: ||a - n|| / max(||a||, ||n||) with the max norm."""
    a, n = to_host(analytic).astype(np.float64).ravel(), np.asarray(to_host(numeric), np.float64).ravel()
    keep = ~np.isnan(n)
    a, n = a[keep], n[keep]
    scale = max(np.abs(a).max(), np.abs(n).max(), 1e-12)
    return float(np.abs(a - n).max() / scale)


class Row(NamedTuple):
    """One line of the table: a layer, the input or parameter its gradient is of, the relative error."""

    layer: str
    name: str
    error: float

    @property
    def passed(self):
        return self.error <= TOLERANCE


def compare(layer, forward, backward_of, inputs, out_weight):
    """One Row per entry of `inputs` (name -> array, perturbed in place by numerical_grad).

    forward() returns the layer's output; backward_of(W) returns the analytic
    gradients of L = sum(forward() * W), keyed like `inputs`.
    """
    analytic = backward_of(out_weight)
    loss = lambda: (forward() * out_weight).sum()  # noqa: E731
    return [Row(layer, name, rel_error(analytic[name], numerical_grad(loss, x))) for name, x in inputs.items()]


def _randn(rng):
    return lambda *shape, scale=1.0: rng.standard_normal(shape) * scale


# -- one check per layer, in the tour's reading order ------------------------------------------


def check_linear(rng):
    randn = _randn(rng)
    x, w, b = randn(2, 3, 4), randn(4, 5), randn(5)

    def backward_of(dout):
        dx, grads = linear.backward(dout, linear.forward(x, w, b)[1])
        return {"x": dx, "weight": grads["weight"], "bias": grads["bias"]}

    return compare("linear", lambda: linear.forward(x, w, b)[0], backward_of, {"x": x, "weight": w, "bias": b},
                   randn(2, 3, 5))


def check_embedding(rng):
    randn = _randn(rng)
    wte, wpe = randn(5, 3), randn(8, 3)
    idx = np.array([[1, 4, 1, 1], [0, 1, 4, 2]])  # repeated ids: their gradients must add up

    def backward_of(dout):
        _, grads = embedding.backward(dout, embedding.forward(idx, wte, wpe)[1])
        return grads

    return compare("embedding", lambda: embedding.forward(idx, wte, wpe)[0], backward_of, {"wte": wte, "wpe": wpe},
                   randn(2, 4, 3))


def check_layernorm(rng):
    randn = _randn(rng)
    x, w, b = randn(2, 3, 6, scale=3.0), randn(6), randn(6)

    def backward_of(dout):
        dx, grads = layernorm.backward(dout, layernorm.forward(x, w, b)[1])
        return {"x": dx, "weight": grads["weight"], "bias": grads["bias"]}

    return compare("layernorm", lambda: layernorm.forward(x, w, b)[0], backward_of, {"x": x, "weight": w, "bias": b},
                   randn(2, 3, 6))


def check_gelu(rng):
    randn = _randn(rng)
    x = randn(3, 5, scale=2.0)
    return compare("gelu", lambda: gelu.forward(x)[0], lambda dout: {"x": gelu.backward(dout, gelu.forward(x)[1])[0]},
                   {"x": x}, randn(3, 5))


def check_rmsnorm(rng):
    randn = _randn(rng)
    x, w = randn(2, 3, 6, scale=3.0), randn(6)

    def backward_of(dout):
        dx, grads = rmsnorm.backward(dout, rmsnorm.forward(x, w)[1])
        return {"x": dx, "weight": grads["weight"]}

    return compare("rmsnorm", lambda: rmsnorm.forward(x, w)[0], backward_of, {"x": x, "weight": w}, randn(2, 3, 6))


def _activation_check(layer, module, rng):
    randn = _randn(rng)
    x = randn(3, 5, scale=2.0)
    return compare(layer, lambda: module.forward(x)[0],
                   lambda dout: {"x": module.backward(dout, module.forward(x)[1])[0]}, {"x": x}, randn(3, 5))


def check_gelu_erf(rng):
    return _activation_check("gelu_erf", gelu_erf, rng)


def check_relu2(rng):
    return _activation_check("relu2", relu2, rng)


def check_swiglu(rng):
    randn = _randn(rng)
    C, h = 4, 6
    x = randn(2, 3, C)
    params = {"c_fc.weight": randn(C, h), "c_fc.bias": randn(h), "c_gate.weight": randn(C, h), "c_gate.bias": randn(h),
         "c_proj.weight": randn(h, C), "c_proj.bias": randn(C)}

    def fwd():
        return swiglu.forward(x, *params.values())

    def backward_of(dout):
        dx, grads = swiglu.backward(dout, fwd()[1])
        return {"x": dx, **grads}

    return compare("swiglu", lambda: fwd()[0], backward_of, {"x": x, **params}, randn(2, 3, C))


def check_rotary(rng):
    randn = _randn(rng)
    x = randn(2, 3, 5, 6)  # (B, H, T, D)
    cos, sin = rotary.tables(np, np.float64, 2, 5, 6, base=10.0)  # positions 2..6, large angles
    return compare("rotary", lambda: rotary.forward(x, cos, sin)[0],
                   lambda dout: {"x": rotary.backward(dout, rotary.forward(x, cos, sin)[1])[0]}, {"x": x},
                   randn(2, 3, 5, 6))


def check_mlp(rng):
    randn = _randn(rng)
    C = 4
    x = randn(2, 3, C)
    params = {"c_fc.weight": randn(C, 4 * C), "c_fc.bias": randn(4 * C),
         "c_proj.weight": randn(4 * C, C), "c_proj.bias": randn(C)}

    def fwd():
        return mlp.forward(x, params["c_fc.weight"], params["c_fc.bias"], params["c_proj.weight"],
                           params["c_proj.bias"])

    def backward_of(dout):
        dx, grads = mlp.backward(dout, fwd()[1])
        return {"x": dx, **grads}

    return compare("mlp", lambda: fwd()[0], backward_of, {"x": x, **params}, randn(2, 3, C))


def check_softmax(rng):
    randn = _randn(rng)
    scores = randn(2, 2, 4, 6, scale=2.0)  # 4 queries, 6 keys: the last query sees every key
    scale = 0.7

    def backward_of(dout):
        return {"scores": softmax.backward(dout, softmax.forward(scores, scale)[1])[0]}

    return compare("softmax", lambda: softmax.forward(scores, scale)[0], backward_of, {"scores": scores},
                   randn(2, 2, 4, 6))


def check_dropout(rng):
    randn = _randn(rng)
    x = randn(4, 6)

    def fwd():
        return dropout.forward(x, 0.3, np.random.default_rng(7), training=True)  # the same mask every time

    return compare("dropout", lambda: fwd()[0], lambda dout: {"x": dropout.backward(dout, fwd()[1])[0]}, {"x": x},
                   randn(4, 6))


def _attention_check(layer, forward, backward, rng, n_kv_head=None, rotary_base=None):
    """Attention with H = 2 heads (D = 3); GPT-2's, or with n_kv_head key/value heads and rotary q, k."""
    randn = _randn(rng)
    B, T, C, H = 2, 5, 6, 2
    if n_kv_head is not None:  # D = 2 (rotary needs it even), H = 4 query heads
        C, H = 8, 4
    width = C + 2 * (n_kv_head or H) * (C // H)  # c_attn's q | k | v columns
    x = randn(B, T, C)
    params = {"c_attn.weight": randn(C, width, scale=0.5), "c_attn.bias": randn(width),
         "c_proj.weight": randn(C, C, scale=0.5), "c_proj.bias": randn(C)}
    rope = None if rotary_base is None else rotary.tables(np, np.float64, 0, T, C // H, rotary_base)

    def fwd():
        return forward(x, params["c_attn.weight"], params["c_attn.bias"], params["c_proj.weight"], params["c_proj.bias"],
                       H, attn_pdrop=0.2, rng=np.random.default_rng(3), training=True, n_kv_head=n_kv_head, rope=rope)

    def backward_of(dout):
        dx, grads = backward(dout, fwd()[1])
        return {"x": dx, **grads}

    return compare(layer, lambda: fwd()[0], backward_of, {"x": x, **params}, randn(B, T, C))


def check_attention(rng):
    return _attention_check("attention", attention.forward, attention.backward, rng)


def check_attention_blocked(rng):
    """minigpt.fast's attention, with blocks of 2 query rows (T = 5: rows 0-1, 2-3, 4) so that blocks skip keys."""
    query_block, fast.attention.QUERY_BLOCK = fast.attention.QUERY_BLOCK, 2
    try:
        return _attention_check("attention_blocked", fast.attention.forward, fast.attention.backward, rng)
    finally:
        fast.attention.QUERY_BLOCK = query_block


def check_attention_gqa_rotary(rng):
    """The textbook attention with 4 query heads sharing 2 key/value heads, rotary q and k."""
    return _attention_check("attention_gqa_rotary", attention.forward, attention.backward, rng, n_kv_head=2,
                            rotary_base=10.0)


def check_attention_blocked_mqa_rotary(rng):
    """minigpt.fast's attention (blocks of 2 rows), one key/value head for 4 query heads (multi-query), rotary."""
    query_block, fast.attention.QUERY_BLOCK = fast.attention.QUERY_BLOCK, 2
    try:
        return _attention_check("attention_blocked_mqa_rotary", fast.attention.forward, fast.attention.backward,
                                rng, n_kv_head=1, rotary_base=10.0)
    finally:
        fast.attention.QUERY_BLOCK = query_block


def _block_check(layer, rng, **switches):
    randn = _randn(rng)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=4, block_size=3, vocab_size=5, **switches)
    prefix = "transformer.h.0."
    params = {name[len(prefix):]: randn(*shape, scale=0.5) for name, shape in param_shapes(config).items()
         if name.startswith(prefix)}
    x = randn(2, 3, config.n_embd)
    options = GPT(config, dtype="float64", seed=0)._block_options(0, 3)

    def fwd():
        return block.forward(x, params, config.n_head, 0.1, np.random.default_rng(11), training=True, **options)

    def backward_of(dout):
        dx, grads = block.backward(dout, fwd()[1])
        return {"x": dx, **grads}

    return compare(layer, lambda: fwd()[0], backward_of, {"x": x, **params}, randn(2, 3, config.n_embd))


def check_block(rng):
    return _block_check("block", rng)


def check_block_modern(rng):
    """A block with RMSNorm, SwiGLU, rotary and one key/value head for its two query heads."""
    return _block_check("block_modern", rng, norm="rmsnorm", activation="swiglu", position="rotary", n_kv_head=1,
                        rope_base=10.0)


def check_lm_head(rng):
    randn = _randn(rng)
    x, wte = randn(2, 3, 4), randn(7, 4)

    def backward_of(dout):
        dx, grads = lm_head.backward(dout, lm_head.forward(x, wte)[1])
        return {"x": dx, "wte": grads["weight"]}

    return compare("lm_head", lambda: lm_head.forward(x, wte)[0], backward_of, {"x": x, "wte": wte}, randn(2, 3, 7))


def check_lora(rng):
    """A LoRA layer, x (2, 3, 4) -> (2, 3, 5), rank 2, alpha 3, dropout 0.2 on the adapter's input: the gradients
    of x, A and B (W and b are frozen: the layer returns none for them)."""
    randn = _randn(rng)
    x, w, b, A, B = randn(2, 3, 4), randn(4, 5), randn(5), randn(2, 4), randn(5, 2)

    def fwd():
        adapted = lora.Adapted(w, A, B, scale=3.0 / 2, rate=0.2, rng=np.random.default_rng(5), training=True)
        return linear.forward(x, adapted, b)

    def backward_of(dout):
        dx, grads = linear.backward(dout, fwd()[1])
        assert set(grads) == {"lora_A.weight", "lora_B.weight"}, grads.keys()  # the frozen W and b: none
        return {"x": dx, "lora_A": grads["lora_A.weight"], "lora_B": grads["lora_B.weight"]}

    return compare("lora", lambda: fwd()[0], backward_of, {"x": x, "lora_A": A, "lora_B": B}, randn(2, 3, 5))


def check_model_lora(rng, entries_per_tensor=12):
    """The whole GPT with adapters on all four targets (rank 2, dropout 0.1 in the model and the adapters):
    a sample of entries of every A and B; B made nonzero so that A's gradient is not zero."""
    from minigpt.lora import add_adapters  # here: the gradient checks of the layers need no model files

    config = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=8, vocab_size=11, dropout=0.1)
    model = GPT(config, dtype="float64", seed=0)
    for param in model.params.values():
        param += rng.standard_normal(param.shape) * 0.3
    add_adapters(model, lora.LoraConfig(rank=2, alpha=2.0, dropout=0.1, targets=tuple(lora.TARGETS)), base="test")
    for name, param in model.adapters.items():
        param[...] = rng.standard_normal(param.shape) * 0.3
    idx, targets = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
    return _sampled_model_rows("model_lora", model, model.adapters, idx, targets, rng, entries_per_tensor)


def _sampled_model_rows(label, model, params, idx, targets, rng, entries_per_tensor):
    """One backward of the model's loss, then central differences on a sample of entries of each tensor in
    `params` (the tensors that get gradients: all of them, or with LoRA the adapters); a Row per tensor."""

    def loss():
        model.rng = np.random.default_rng(1234)  # the same dropout masks on every forward
        return model.forward(idx, targets)[1]

    model.train()
    loss()
    grads = model.backward()
    assert set(grads) == set(params), sorted(set(grads) ^ set(params))
    rows = []
    for name, param in params.items():
        indices = rng.choice(param.size, size=min(param.size, entries_per_tensor), replace=False)
        numeric = numerical_grad(loss, param, indices=indices)
        rows.append(Row(label, name, rel_error(grads[name].ravel()[indices], numeric.ravel()[indices])))
    return rows


def check_cross_entropy(rng):
    logits = _randn(rng)(2, 4, 7, scale=2.0)
    targets = np.array([[1, -1, 6, 0], [-1, 3, 3, 2]])  # -1: ignored positions
    dlogits, _ = cross_entropy.backward(1.0, cross_entropy.forward(logits, targets)[1])  # L is the loss itself
    numeric = numerical_grad(lambda: cross_entropy.forward(logits, targets)[0], logits)
    return [Row("cross_entropy", "logits", rel_error(dlogits, numeric))]


# the whole model's checks: GPT-2, and combinations that between them use every switch value
MODELS = {
    "model": {},
    "model_modern": dict(norm="rmsnorm", activation="swiglu", position="rotary", tie_embeddings=False, n_kv_head=1),
    "model_gelu_gqa": dict(activation="gelu", n_kv_head=2, n_head=4, bias=False),
    "model_relu2_rotary": dict(activation="relu2", position="rotary", rope_base=100.0),
}


def check_model(rng, entries_per_tensor=12, layer="model", fast=True):
    """The whole GPT, loss = cross-entropy: a sample of entries of every parameter (tied wte included).

    fast: on the layers of minigpt.fast, what the model runs (rows `model...`), or else on the plain
    layers of minigpt.nn (rows `model..._plain`).
    """
    shape = dict(n_layer=2, n_head=2, n_embd=8, block_size=8, vocab_size=11, dropout=0.1)
    config = GPTConfig(**{**shape, **MODELS[layer]})
    model = GPT(config, dtype="float64", seed=0, fast=fast)
    for name, param in model.params.items():
        if name.endswith(".bias") or ".ln_" in name:  # LayerNorm and bias values away from 1 and 0
            param += rng.standard_normal(param.shape) * 0.1
        else:  # weights large enough that attention is far from uniform and gradients are not tiny
            param *= 15.0
    idx = rng.integers(0, 11, (2, 8))
    targets = rng.integers(0, 11, (2, 8))
    targets[1, :3] = -1
    label = layer if fast else f"{layer}_plain"
    return _sampled_model_rows(label, model, model.params, idx, targets, rng, entries_per_tensor)


LAYERS = {
    "linear": check_linear,
    "embedding": check_embedding,
    "layernorm": check_layernorm,
    "rmsnorm": check_rmsnorm,
    "gelu": check_gelu,
    "gelu_erf": check_gelu_erf,
    "relu2": check_relu2,
    "mlp": check_mlp,
    "swiglu": check_swiglu,
    "rotary": check_rotary,
    "softmax": check_softmax,
    "dropout": check_dropout,
    "attention": check_attention,
    "attention_blocked": check_attention_blocked,
    "attention_gqa_rotary": check_attention_gqa_rotary,
    "attention_blocked_mqa_rotary": check_attention_blocked_mqa_rotary,
    "block": check_block,
    "block_modern": check_block_modern,
    "lm_head": check_lm_head,
    "cross_entropy": check_cross_entropy,
    "lora": check_lora,
    **{name: (lambda rng, name=name: check_model(rng, layer=name)) for name in MODELS},
    **{f"{name}_plain": (lambda rng, name=name: check_model(rng, layer=name, fast=False)) for name in MODELS},
    "model_lora": check_model_lora,
}


def check(layer=None, seed=0):
    """The rows of one layer's check (a name in LAYERS), or of every layer's when None."""
    names = list(LAYERS) if layer is None else [layer]
    rows = []
    for name in names:
        rows += LAYERS[name](np.random.default_rng(seed))
    return rows
