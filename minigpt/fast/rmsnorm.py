"""RMSNorm, fast: must equal minigpt.nn.rmsnorm.forward / .backward.

The row sums as BLAS products (backend.sum_last_axis, sum_first_axis: several
times faster on NumPy than its reduction over a short axis), the buffer of dx
reused in place; the same xp code runs on NumPy and CuPy.
"""

from minigpt.backend import sum_first_axis, sum_last_axis
from minigpt.nn.rmsnorm import EPS


def forward(x, weight, bias=None, eps=EPS):
    """minigpt.nn.rmsnorm.forward: y, and the cache (xhat, rstd, weight)."""
    if bias is not None:
        raise ValueError("RMSNorm has no bias")
    ms = sum_last_axis(x * x) * (1.0 / x.shape[-1])  # mean(x^2), (..., 1)
    rstd = 1.0 / (ms + eps) ** 0.5  # (..., 1)
    xhat = x * rstd  # (..., C)
    return xhat * weight, (xhat, rstd, weight)


def backward(dout, cache):
    """minigpt.nn.rmsnorm.backward: dx, and {"weight": dw}."""
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    grads = {"weight": sum_first_axis(dout.reshape(-1, C) * xhat.reshape(-1, C))}  # dw = sum over rows of dout * xhat
    dx = dout * weight  # dxhat, (..., C); becomes dx in place
    mean_dxhat_xhat = sum_last_axis(dx * xhat) * (1.0 / C)  # mean(dxhat * xhat), (..., 1)
    dx -= xhat * mean_dxhat_xhat
    dx *= rstd
    return dx, grads
