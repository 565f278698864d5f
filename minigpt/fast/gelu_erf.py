"""Exact GELU, fast: must equal minigpt.nn.gelu_erf.forward / .backward.

The formulas built in place in one or two buffers; the same xp code runs on NumPy and CuPy.
"""

from minigpt.backend import array_module
from minigpt.nn.gelu_erf import INV_SQRT_2PI, SQRT_HALF, erf


def forward(x):
    """minigpt.nn.gelu_erf.forward: x Phi(x), and the cache (x, Phi(x))."""
    cdf = erf(x * SQRT_HALF)
    cdf += 1.0
    cdf *= 0.5  # Phi(x)
    return x * cdf, (x, cdf)


def backward(dout, cache):
    """minigpt.nn.gelu_erf.backward: dx = dout * (Phi(x) + x phi(x)), and {}."""
    x, cdf = cache
    xp = array_module(x)
    dx = x * x
    dx *= -0.5
    xp.exp(dx, out=dx)
    dx *= INV_SQRT_2PI  # phi(x)
    dx *= x
    dx += cdf  # Phi(x) + x phi(x)
    dx *= dout
    return dx, {}
