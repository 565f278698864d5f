"""GPT-2's feed-forward network: out = gelu(x @ W_fc + b_fc) @ W_proj + b_proj.

The hidden layer is 4C wide (minigpt.model.mlp_hidden). Backward is the chain
rule through the three layers in reverse: c_proj (linear), GELU, c_fc (linear).

`activation` is the elementwise layer between the two linear layers, a module
with forward(x) -> (a, cache) and backward(dout, cache): GPT-2's tanh GELU
(gelu.py, the default), the exact GELU (gelu_erf.py), squared ReLU (relu2.py);
the model picks it from its table by GPTConfig.activation. The gated SwiGLU has
a third matrix and is its own network, swiglu.py.
"""

from minigpt.nn import gelu, linear


def forward(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b, activation=gelu):
    """x: (B, T, C) -> out: (B, T, C)."""
    h, fc_cache = linear.forward(x, c_fc_w, c_fc_b)  # (B, T, 4C)
    a, act_cache = activation.forward(h)  # (B, T, 4C)
    out, proj_cache = linear.forward(a, c_proj_w, c_proj_b)  # (B, T, C)
    return out, (fc_cache, activation, act_cache, proj_cache)


def backward(dout, cache):
    """Returns dx (B, T, C) and the gradients of c_fc and c_proj."""
    fc_cache, activation, act_cache, proj_cache = cache
    da, proj_grads = linear.backward(dout, proj_cache)
    dh, _ = activation.backward(da, act_cache)
    dx, fc_grads = linear.backward(dh, fc_cache)
    grads = {f"c_fc.{name}": grad for name, grad in fc_grads.items()}
    grads.update({f"c_proj.{name}": grad for name, grad in proj_grads.items()})
    return dx, grads
