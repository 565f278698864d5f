"""GPT-2's feed-forward network: out = gelu(x @ W_fc + b_fc) @ W_proj + b_proj.

The hidden layer is 4C wide. Backward is the chain rule through the three
layers in reverse: c_proj (linear), GELU, c_fc (linear).
"""

from minigpt.nn import gelu, linear


def forward(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):
    """x: (B, T, C) -> out: (B, T, C)."""
    h, fc_cache = linear.forward(x, c_fc_w, c_fc_b)  # (B, T, 4C)
    a, gelu_cache = gelu.forward(h)  # (B, T, 4C)
    out, proj_cache = linear.forward(a, c_proj_w, c_proj_b)  # (B, T, C)
    return out, (fc_cache, gelu_cache, proj_cache)


def backward(dout, cache):
    fc_cache, gelu_cache, proj_cache = cache
    da, proj_grads = linear.backward(dout, proj_cache)
    dh, _ = gelu.backward(da, gelu_cache)
    dx, fc_grads = linear.backward(dh, fc_cache)
    grads = {f"c_fc.{name}": g for name, g in fc_grads.items()}
    grads.update({f"c_proj.{name}": g for name, g in proj_grads.items()})
    return dx, grads
