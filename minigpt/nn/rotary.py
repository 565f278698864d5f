"""Rotary position embedding, RoPE (`position = "rotary"`; Su et al. 2021, as in LLaMA and Hugging Face).

Instead of adding a learned wpe row to the input, attention rotates each query
and key by an angle proportional to its position. Head channels i and i + D/2
(i < D/2) form a pair, rotated at position t by theta_{t,i} = t * base^(-2i/D):

    y_i       = x_i cos(theta) - x_{i+D/2} sin(theta)
    y_{i+D/2} = x_i sin(theta) + x_{i+D/2} cos(theta)

so q_t . k_s depends on the positions only through t - s (R(t)^T R(s) = R(s - t)).

Backward. The forward is y = R x with R a rotation (orthogonal) matrix per
pair, so dx = R^T dout, and R^T is the rotation by -theta (cos is even, sin odd):

    dx_i       =  dout_i cos(theta) + dout_{i+D/2} sin(theta)
    dx_{i+D/2} = -dout_i sin(theta) + dout_{i+D/2} cos(theta)

No parameters. `tables` computes cos and sin for a run of positions once per
forward (in float64, then cast); the same xp code runs on NumPy and CuPy.
"""

from minigpt.backend import array_module

ROPE_BASE = 10000.0


def tables(xp, dtype, start, length, head_dim, base=ROPE_BASE):
    """cos, sin of theta_{t,i} for t = start .. start + length - 1, i < head_dim / 2: each (length, head_dim / 2)."""
    return tables_at(xp, dtype, xp.arange(start, start + length), head_dim, base)


def tables_at(xp, dtype, positions, head_dim, base=ROPE_BASE):
    """cos, sin of theta_{t,i} for every t in `positions` (any shape S, on xp): each (*S, head_dim / 2).

    Per-row positions (B, 1, T) give tables that broadcast over a (B, H, T, D) batch
    whose rows start at different positions (left-padded prompts).
    """
    inv_freq = base ** (-xp.arange(0, head_dim, 2, dtype=xp.float64) / head_dim)  # (D/2,)
    theta = positions.astype(xp.float64)[..., None] * inv_freq  # (*S, D/2)
    return xp.cos(theta).astype(dtype), xp.sin(theta).astype(dtype)


def _rotate(x, cos, sin):
    """The rotation of each pair (x_i, x_{i+D/2}) by the angle whose cos and sin are given; x (..., T, D)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    y = array_module(x).empty_like(x)  # (..., T, D)
    y[..., :half] = x1 * cos - x2 * sin
    y[..., half:] = x1 * sin + x2 * cos
    return y


def forward(x, cos, sin):
    """x: (..., T, D), cos/sin: (T, D/2) -> R x, and the cache (cos, sin)."""
    return _rotate(x, cos, sin), (cos, sin)


def backward(dout, cache):
    """Returns dx = R^T dout, the rotation by -theta, and {} (no parameters)."""
    cos, sin = cache
    return _rotate(dout, cos, -sin), {}
