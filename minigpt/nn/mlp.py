"""GPT-2's feed-forward network: out = gelu(x @ W_fc + b_fc) @ W_proj + b_proj.

The hidden layer is 4C wide (minigpt.model.mlp_hidden). Backward is the chain
rule through the three layers in reverse: c_proj (linear), GELU, c_fc (linear).

`activation` picks the elementwise function between the two linear layers, each
a module of minigpt.nn with forward(x) -> (y, cache) and backward(dy, cache):
GPT-2's tanh GELU (gelu.py), the exact GELU (gelu_erf.py), squared ReLU
(relu2.py). The gated SwiGLU has a third matrix and is its own network, swiglu.py.
"""

from minigpt.nn import gelu, gelu_erf, linear, relu2

ACTIVATIONS = {"gelu_tanh": gelu, "gelu": gelu_erf, "relu2": relu2}


def forward(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b, activation="gelu_tanh"):
    """x: (B, T, C) -> out: (B, T, C)."""
    act = ACTIVATIONS[activation]
    h, fc_cache = linear.forward(x, c_fc_w, c_fc_b)  # (B, T, 4C)
    a, act_cache = act.forward(h)  # (B, T, 4C)
    out, proj_cache = linear.forward(a, c_proj_w, c_proj_b)  # (B, T, C)
    return out, (fc_cache, act, act_cache, proj_cache)


def backward(dout, cache):
    fc_cache, act, act_cache, proj_cache = cache
    da, proj_grads = linear.backward(dout, proj_cache)
    dh, _ = act.backward(da, act_cache)
    dx, fc_grads = linear.backward(dh, fc_cache)
    grads = {f"c_fc.{name}": g for name, g in fc_grads.items()}
    grads.update({f"c_proj.{name}": g for name, g in proj_grads.items()})
    return dx, grads
