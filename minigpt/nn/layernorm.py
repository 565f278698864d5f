"""LayerNorm over the last axis (eps 1e-5, biased variance), as in GPT-2.

Forward, per row x of C features:

    mu = mean(x),   var = mean((x - mu)^2),   rstd = 1 / sqrt(var + eps)
    xhat = (x - mu) * rstd,                   y = xhat * w + b

Backward. The parameter gradients sum over rows: dw = sum dy * xhat, db = sum dy.
For x, let g = dy * w (the gradient reaching xhat). xhat depends on every x_j of
its row through mu and rstd:

    d xhat_i / d x_j = rstd * (delta_ij - 1/C - xhat_i * xhat_j / C)

so
    dx_j = rstd * (g_j - mean(g) - xhat_j * mean(g * xhat))

NumPy arrays are computed here (the twin is the NumPy code of `forward` and
`backward`); CuPy arrays go to the CUDA kernels in minigpt/kernels/layernorm_cuda.py
(one warp per row), which evaluate the same formulas in the same order and keep
the same cache.
"""

import numpy as np

from minigpt.backend import array_module, sum_first_axis, sum_last_axis
from minigpt.kernels import layernorm_cuda

EPS = 1e-5


def forward(x, weight, bias=None, eps=EPS):
    """x: (..., C), weight/bias: (C,) -> y: (..., C), and the cache (xhat, rstd, weight, has_bias)."""
    if array_module(x) is not np:
        y, xhat, rstd = layernorm_cuda.layernorm_forward_cuda(x, weight, bias, eps)
        return y, (xhat, rstd, weight, bias is not None)
    inv_C = 1.0 / x.shape[-1]
    mu = sum_last_axis(x) * inv_C  # mean(x) over the C features, (..., 1)
    xhat = x - mu  # (..., C)
    var = sum_last_axis(xhat * xhat) * inv_C  # mean((x - mu)^2), (..., 1)
    rstd = 1.0 / (var + eps) ** 0.5  # only (..., 1) elements: the float power is cheap here
    xhat *= rstd
    y = xhat * weight
    if bias is not None:
        y += bias
    return y, (xhat, rstd, weight, bias is not None)


def backward(dy, cache):
    """Returns dx (..., C) and {"weight": dw, "bias": db}."""
    xhat, rstd, weight, has_bias = cache
    if array_module(xhat) is not np:
        dx, dw, db = layernorm_cuda.layernorm_backward_cuda(dy, xhat, rstd, weight)
        return dx, ({"weight": dw, "bias": db} if has_bias else {"weight": dw})
    C = xhat.shape[-1]
    dy2 = dy.reshape(-1, C)
    grads = {"weight": sum_first_axis(dy2 * xhat.reshape(-1, C))}  # dw = sum over rows of dy * xhat
    if has_bias:
        grads["bias"] = sum_first_axis(dy2)  # db = sum over rows of dy
    g = dy * weight  # (..., C)
    mean_g = sum_last_axis(g) * (1.0 / C)  # mean(g), (..., 1)
    mean_gx = sum_last_axis(g * xhat) * (1.0 / C)  # mean(g * xhat), (..., 1)
    g -= mean_g
    g -= xhat * mean_gx
    g *= rstd
    return g, grads
