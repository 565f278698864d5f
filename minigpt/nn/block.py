"""One transformer block, pre-LN as in GPT-2:

    x = x + dropout(attn(ln_1(x)))
    x = x + dropout(mlp(ln_2(x)))

Backward of a residual connection x_out = x + f(x): the gradient reaches x
twice, straight through the skip and through f, and the two add:

    dx = dx_out + df(x)^T dx_out

`p` holds this block's parameters under Hugging Face's names without the
`transformer.h.{i}.` prefix (`ln_1.weight`, `attn.c_attn.weight`, ...); the
gradients come back under the same names.
"""

from minigpt.nn import attention, dropout, layernorm, mlp


def forward(x, p, n_head, dropout_p=0.0, rng=None, training=False):
    """x: (B, T, C) -> (B, T, C)."""
    h, ln_1_cache = layernorm.forward(x, p["ln_1.weight"], p.get("ln_1.bias"))
    h, attn_cache = attention.forward_blocked(  # the fast path of attention.forward
        h, p["attn.c_attn.weight"], p.get("attn.c_attn.bias"), p["attn.c_proj.weight"], p.get("attn.c_proj.bias"),
        n_head, dropout_p, rng, training,
    )
    h, attn_drop_cache = dropout.forward(h, dropout_p, rng, training)
    x = x + h  # a new array: the caller's x stays intact

    h, ln_2_cache = layernorm.forward(x, p["ln_2.weight"], p.get("ln_2.bias"))
    h, mlp_cache = mlp.forward(h, p["mlp.c_fc.weight"], p.get("mlp.c_fc.bias"), p["mlp.c_proj.weight"], p.get("mlp.c_proj.bias"))
    h, mlp_drop_cache = dropout.forward(h, dropout_p, rng, training)
    x += h
    return x, (ln_1_cache, attn_cache, attn_drop_cache, ln_2_cache, mlp_cache, mlp_drop_cache)


def backward(dout, cache):
    """Returns dx (B, T, C) and this block's gradients keyed like `p`."""
    ln_1_cache, attn_cache, attn_drop_cache, ln_2_cache, mlp_cache, mlp_drop_cache = cache
    grads = {}

    # second residual: x_out = x_mid + dropout(mlp(ln_2(x_mid)))
    dh, _ = dropout.backward(dout, mlp_drop_cache)
    dh, g = mlp.backward(dh, mlp_cache)
    grads.update({f"mlp.{k}": v for k, v in g.items()})
    dh, g = layernorm.backward(dh, ln_2_cache)
    grads.update({f"ln_2.{k}": v for k, v in g.items()})
    dx_mid = dout + dh

    # first residual: x_mid = x + dropout(attn(ln_1(x)))
    dh, _ = dropout.backward(dx_mid, attn_drop_cache)
    dh, g = attention.backward_blocked(dh, attn_cache)
    grads.update({f"attn.{k}": v for k, v in g.items()})
    dh, g = layernorm.backward(dh, ln_1_cache)
    grads.update({f"ln_1.{k}": v for k, v in g.items()})
    dx_mid += dh
    return dx_mid, grads


def forward_cached(x, p, n_head, keys, values, length):
    """Inference with this layer's KV cache (see attention.forward_cached)."""
    h, _ = layernorm.forward(x, p["ln_1.weight"], p.get("ln_1.bias"))
    x = x + attention.forward_cached(
        h, p["attn.c_attn.weight"], p.get("attn.c_attn.bias"), p["attn.c_proj.weight"], p.get("attn.c_proj.bias"),
        n_head, keys, values, length,
    )
    h, _ = layernorm.forward(x, p["ln_2.weight"], p.get("ln_2.bias"))
    h, _ = mlp.forward(h, p["mlp.c_fc.weight"], p.get("mlp.c_fc.bias"), p["mlp.c_proj.weight"], p.get("mlp.c_proj.bias"))
    x += h
    return x
