"""Squared ReLU (`activation = "relu2"`, from Primer and modded-nanoGPT): y = max(x, 0)^2.

Backward: for x > 0, y = x^2 and y' = 2x; for x <= 0, y = 0 and y' = 0. Both are

    dx = dout * 2 max(x, 0)

(the function is differentiable at 0 too: both one-sided slopes are 0). The
cache is r = max(x, 0). The same xp code runs on NumPy and CuPy.
"""

from minigpt.backend import array_module


def forward(x):
    """x: any shape -> relu(x)^2, and relu(x) as the cache."""
    r = array_module(x).maximum(x, 0.0)
    return r * r, r


def backward(dout, r):
    """Returns dx = dout * 2 relu(x) and {} (no parameters)."""
    return dout * r * 2.0, {}
