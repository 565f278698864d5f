"""SwiGLU, fast: `backward` must equal minigpt.nn.swiglu.backward (`forward` is the plain one).

silu's backward is built in place in one buffer, and c_gate's dx is added into
c_fc's; the same xp code runs on NumPy and CuPy.
"""

from minigpt.nn import linear
from minigpt.nn.swiglu import forward  # noqa: F401 (the table's forward: it has no faster twin)


def silu_backward(dout, cache):
    """minigpt.nn.swiglu.silu_backward: dgate = dout * s (1 + gate (1 - s)), in place."""
    gate, s = cache
    dgate = 1.0 - s
    dgate *= gate
    dgate += 1.0
    dgate *= s
    dgate *= dout
    return dgate


def backward(dout, cache):
    """minigpt.nn.swiglu.backward: dx, and the gradients of c_fc, c_gate and c_proj."""
    fc_cache, gate_cache, u, silu, silu_cache, proj_cache = cache
    dm, proj_grads = linear.backward(dout, proj_cache)  # (B, T, h)
    dgate = silu_backward(dm * u, silu_cache)
    dx, fc_grads = linear.backward(dm * silu, fc_cache)
    dx_gate, gate_grads = linear.backward(dgate, gate_cache)
    dx += dx_gate  # x feeds both c_fc and c_gate
    grads = {f"c_fc.{name}": grad for name, grad in fc_grads.items()}
    grads.update({f"c_gate.{name}": grad for name, grad in gate_grads.items()})
    grads.update({f"c_proj.{name}": grad for name, grad in proj_grads.items()})
    return dx, grads
