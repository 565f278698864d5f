"""Inverted dropout: zero each element with probability p, scale survivors by 1/(1-p).

    y = x * m / (1 - p),   m_i ~ Bernoulli(1 - p)

so E[y] = x and nothing needs rescaling at evaluation time, when dropout is the
identity. Backward multiplies by the same mask and scale: dx = dy * m / (1 - p).
"""


def forward(x, p, rng, training=True):
    """Returns y and the cache (the boolean keep-mask, or None when dropout is off)."""
    if not training or p == 0.0:
        return x, None
    keep = rng.random(x.shape, dtype=x.dtype) >= p  # (same shape as x), bool
    y = x * keep
    y *= 1.0 / (1.0 - p)
    return y, (keep, p)


def backward(dy, cache):
    if cache is None:
        return dy, {}
    keep, p = cache
    dx = dy * keep
    dx *= 1.0 / (1.0 - p)
    return dx, {}
