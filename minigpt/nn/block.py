"""One transformer block, pre-LN as in GPT-2:

    x = x + dropout(attn(ln_1(x)))
    x = x + dropout(mlp(ln_2(x)))

Backward of a residual connection x_out = x + f(x): the gradient reaches x
twice, straight through the skip and through f, and the two add:

    dx = dx_out + df(x)^T dx_out

`p` holds this block's parameters under Hugging Face's names without the
`transformer.h.{i}.` prefix (`ln_1.weight`, `attn.c_attn.weight`, ...); the
gradients come back under the same names.

The switches of minigpt.model.GPTConfig arrive as keywords, GPT-2's values the
defaults: `norm` (layernorm | rmsnorm, the module behind ln_1 and ln_2),
`activation` (gelu_tanh | gelu | relu2 in mlp.py, swiglu in swiglu.py),
`n_kv_head` and `rope` (grouped-query and rotary attention, attention.py).
"""

from minigpt.nn import attention, dropout, layernorm, mlp, rmsnorm, swiglu

NORMS = {"layernorm": layernorm, "rmsnorm": rmsnorm}


def _mlp_forward(h, p, activation):
    if activation == "swiglu":
        out, cache = swiglu.forward(h, p["mlp.c_fc.weight"], p.get("mlp.c_fc.bias"), p["mlp.c_gate.weight"],
                                    p.get("mlp.c_gate.bias"), p["mlp.c_proj.weight"], p.get("mlp.c_proj.bias"))
        return out, (swiglu, cache)
    out, cache = mlp.forward(h, p["mlp.c_fc.weight"], p.get("mlp.c_fc.bias"), p["mlp.c_proj.weight"],
                             p.get("mlp.c_proj.bias"), activation)
    return out, (mlp, cache)


def forward(x, p, n_head, dropout_p=0.0, rng=None, training=False, norm="layernorm", activation="gelu_tanh",
            n_kv_head=None, rope=None):
    """x: (B, T, C) -> (B, T, C)."""
    norm = NORMS[norm]
    h, ln_1_cache = norm.forward(x, p["ln_1.weight"], p.get("ln_1.bias"))
    h, attn_cache = attention.forward_blocked(  # the fast path of attention.forward
        h, p["attn.c_attn.weight"], p.get("attn.c_attn.bias"), p["attn.c_proj.weight"], p.get("attn.c_proj.bias"),
        n_head, dropout_p, rng, training, n_kv_head, rope,
    )
    h, attn_drop_cache = dropout.forward(h, dropout_p, rng, training)
    x = x + h  # a new array: the caller's x stays intact

    h, ln_2_cache = norm.forward(x, p["ln_2.weight"], p.get("ln_2.bias"))
    h, mlp_cache = _mlp_forward(h, p, activation)
    h, mlp_drop_cache = dropout.forward(h, dropout_p, rng, training)
    x += h
    return x, (norm, ln_1_cache, attn_cache, attn_drop_cache, ln_2_cache, mlp_cache, mlp_drop_cache)


def backward(dout, cache):
    """Returns dx (B, T, C) and this block's gradients keyed like `p`."""
    norm, ln_1_cache, attn_cache, attn_drop_cache, ln_2_cache, (mlp_module, mlp_cache), mlp_drop_cache = cache
    grads = {}

    # second residual: x_out = x_mid + dropout(mlp(ln_2(x_mid)))
    dh, _ = dropout.backward(dout, mlp_drop_cache)
    dh, g = mlp_module.backward(dh, mlp_cache)
    grads.update({f"mlp.{k}": v for k, v in g.items()})
    dh, g = norm.backward(dh, ln_2_cache)
    grads.update({f"ln_2.{k}": v for k, v in g.items()})
    dx_mid = dout + dh

    # first residual: x_mid = x + dropout(attn(ln_1(x)))
    dh, _ = dropout.backward(dx_mid, attn_drop_cache)
    dh, g = attention.backward_blocked(dh, attn_cache)
    grads.update({f"attn.{k}": v for k, v in g.items()})
    dh, g = norm.backward(dh, ln_1_cache)
    grads.update({f"ln_1.{k}": v for k, v in g.items()})
    dx_mid += dh
    return dx_mid, grads


def forward_cached(x, p, n_head, keys, values, length, norm="layernorm", activation="gelu_tanh",
                   n_kv_head=None, rope=None, mask=None):
    """Inference with this layer's KV cache (see attention.forward_cached)."""
    norm = NORMS[norm]
    h, _ = norm.forward(x, p["ln_1.weight"], p.get("ln_1.bias"))
    x = x + attention.forward_cached(
        h, p["attn.c_attn.weight"], p.get("attn.c_attn.bias"), p["attn.c_proj.weight"], p.get("attn.c_proj.bias"),
        n_head, keys, values, length, n_kv_head, rope, mask,
    )
    h, _ = norm.forward(x, p["ln_2.weight"], p.get("ln_2.bias"))
    h, _ = _mlp_forward(h, p, activation)
    x += h
    return x
