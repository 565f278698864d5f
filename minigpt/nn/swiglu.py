"""The gated feed-forward network of LLaMA (`activation = "swiglu"`), three matrices:

    u = x @ W_fc + b_fc                  # (B, T, h)  the "up" projection
    g = x @ W_gate + b_gate              # (B, T, h)  the gate
    m = silu(g) * u                      # (B, T, h)  silu(g) = g * sigmoid(g)
    out = m @ W_proj + b_proj            # (B, T, C)

Its hidden width h is about 8C/3 (minigpt.model.mlp_hidden), so that its 3 C h
weights match the 2 C (4C) of GPT-2's MLP.

Backward. c_proj is a linear layer: dm = dout @ W_proj^T. The product rule on
m = silu(g) * u sends dm to each factor times the other:

    du = dm * silu(g)                    ds = dm * u

and the chain rule through silu, with s = sigmoid(g) and s' = s (1 - s):

    silu'(g) = s + g s (1 - s) = s (1 + g (1 - s))          dg = ds * silu'(g)

x feeds both c_fc and c_gate, so its gradient is the sum of theirs:

    dx = du @ W_fc^T + dg @ W_gate^T

The same xp code runs on NumPy and CuPy.
"""

from minigpt.backend import array_module
from minigpt.nn import linear


def sigmoid(g):
    """1 / (1 + exp(-g)) without overflow: exp of -|g| only, then s or 1 - s by the sign."""
    xp = array_module(g)
    e = xp.exp(-xp.abs(g))  # in (0, 1]
    return xp.where(g >= 0, 1.0, e) / (1.0 + e)


def silu_forward(g):
    """silu(g) = g sigmoid(g), and the cache (g, sigmoid(g))."""
    s = sigmoid(g)
    return g * s, (g, s)


def silu_backward(ds, cache):
    """dg = ds * s (1 + g (1 - s))."""
    g, s = cache
    dg = 1.0 - s
    dg *= g
    dg += 1.0
    dg *= s
    dg *= ds
    return dg, {}


def forward(x, c_fc_w, c_fc_b, c_gate_w, c_gate_b, c_proj_w, c_proj_b):
    """x: (B, T, C) -> out: (B, T, C)."""
    u, fc_cache = linear.forward(x, c_fc_w, c_fc_b)  # (B, T, h)
    g, gate_cache = linear.forward(x, c_gate_w, c_gate_b)  # (B, T, h)
    s, silu_cache = silu_forward(g)
    out, proj_cache = linear.forward(s * u, c_proj_w, c_proj_b)  # (B, T, C)
    return out, (fc_cache, gate_cache, u, s, silu_cache, proj_cache)


def backward(dout, cache):
    """Returns dx (B, T, C) and the gradients of c_fc, c_gate and c_proj."""
    fc_cache, gate_cache, u, s, silu_cache, proj_cache = cache
    dm, proj_grads = linear.backward(dout, proj_cache)  # (B, T, h)
    dg, _ = silu_backward(dm * u, silu_cache)  # ds = dm * u, then through silu
    du = dm * s
    dx, fc_grads = linear.backward(du, fc_cache)
    dx_gate, gate_grads = linear.backward(dg, gate_cache)
    dx += dx_gate  # x feeds both c_fc and c_gate
    grads = {f"c_fc.{k}": v for k, v in fc_grads.items()}
    grads.update({f"c_gate.{k}": v for k, v in gate_grads.items()})
    grads.update({f"c_proj.{k}": v for k, v in proj_grads.items()})
    return dx, grads
