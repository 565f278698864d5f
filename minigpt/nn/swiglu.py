"""The gated feed-forward network of LLaMA (`activation = "swiglu"`), three matrices:

    u = x @ W_fc + b_fc                  # (B, T, h)  the "up" projection
    gate = x @ W_gate + b_gate           # (B, T, h)
    m = silu(gate) * u                   # (B, T, h)  silu(gate) = gate * sigmoid(gate)
    out = m @ W_proj + b_proj            # (B, T, C)

Its hidden width h is about 8C/3 (minigpt.model.mlp_hidden), so that its 3 C h
weights match the 2 C (4C) of GPT-2's MLP.

Backward. c_proj is a linear layer: dm = dout @ W_proj^T. The product rule on
m = silu(gate) * u sends dm to each factor times the other:

    du = dm * silu(gate)                 dsilu = dm * u

and the chain rule through silu, with s = sigmoid(gate) and s' = s (1 - s):

    silu'(gate) = s + gate s (1 - s) = s (1 + gate (1 - s))      dgate = dsilu * silu'(gate)

x feeds both c_fc and c_gate, so its gradient is the sum of theirs:

    dx = du @ W_fc^T + dgate @ W_gate^T

The same xp code runs on NumPy and CuPy (minigpt/fast/swiglu.py: silu's backward in place).
"""

from minigpt.backend import array_module
from minigpt.nn import linear


def sigmoid(gate):
    """1 / (1 + exp(-gate)) without overflow: exp of -|gate| only, then s or 1 - s by the sign."""
    xp = array_module(gate)
    e = xp.exp(-xp.abs(gate))  # in (0, 1]
    return xp.where(gate >= 0, 1.0, e) / (1.0 + e)


def silu_forward(gate):
    """silu(gate) = gate sigmoid(gate), and the cache (gate, sigmoid(gate))."""
    s = sigmoid(gate)
    return gate * s, (gate, s)


def silu_backward(dout, cache):
    """dgate = dout * s (1 + gate (1 - s)), and {}."""
    gate, s = cache
    return dout * s * (1 + gate * (1 - s)), {}


def forward(x, c_fc_w, c_fc_b, c_gate_w, c_gate_b, c_proj_w, c_proj_b):
    """x: (B, T, C) -> out: (B, T, C)."""
    u, fc_cache = linear.forward(x, c_fc_w, c_fc_b)  # (B, T, h)
    gate, gate_cache = linear.forward(x, c_gate_w, c_gate_b)  # (B, T, h)
    silu, silu_cache = silu_forward(gate)
    out, proj_cache = linear.forward(silu * u, c_proj_w, c_proj_b)  # (B, T, C)
    return out, (fc_cache, gate_cache, u, silu, silu_cache, proj_cache)


def backward(dout, cache):
    """Returns dx (B, T, C) and the gradients of c_fc, c_gate and c_proj."""
    fc_cache, gate_cache, u, silu, silu_cache, proj_cache = cache
    dm, proj_grads = linear.backward(dout, proj_cache)  # (B, T, h)
    dgate, _ = silu_backward(dm * u, silu_cache)  # dsilu = dm * u, then through silu
    du = dm * silu
    dx_fc, fc_grads = linear.backward(du, fc_cache)
    dx_gate, gate_grads = linear.backward(dgate, gate_cache)
    grads = {f"c_fc.{name}": grad for name, grad in fc_grads.items()}
    grads.update({f"c_gate.{name}": grad for name, grad in gate_grads.items()})
    grads.update({f"c_proj.{name}": grad for name, grad in proj_grads.items()})
    return dx_fc + dx_gate, grads  # x feeds both c_fc and c_gate
