"""Inverted dropout: zero each element with probability `rate`, scale survivors by 1/(1 - rate).

    y = x * m / (1 - rate),   m_i ~ Bernoulli(1 - rate)

so E[y] = x and nothing needs rescaling at evaluation time, when dropout is the
identity. Backward multiplies by the same mask and scale: dx = dout * m / (1 - rate).
"""


def forward(x, rate, rng, training=True):
    """Returns y and the cache (the boolean keep-mask and the rate, or None when dropout is off)."""
    if not training or rate == 0.0:
        return x, None
    keep = rng.random(x.shape, dtype=x.dtype) >= rate  # (same shape as x), bool
    y = x * keep
    y *= 1.0 / (1.0 - rate)
    return y, (keep, rate)


def backward(dout, cache):
    """Returns dx = dout * m / (1 - rate) and {} (no parameters)."""
    if cache is None:
        return dout, {}
    keep, rate = cache
    dx = dout * keep
    dx *= 1.0 / (1.0 - rate)
    return dx, {}
