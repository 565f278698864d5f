"""LayerNorm, fast: must equal minigpt.nn.layernorm.forward / .backward.

NumPy arrays: the row sums as BLAS matrix-vector products (backend.sum_last_axis,
several times faster than NumPy's reduction over a short last axis) and the
buffers reused in place. CuPy arrays go to the CUDA kernels of
minigpt/kernels/layernorm_cuda.py (one warp per row), which evaluate the same
formulas in the same order and keep the same cache.
"""

import numpy as np

from minigpt.backend import array_module, sum_first_axis, sum_last_axis
from minigpt.kernels import layernorm_cuda
from minigpt.nn.layernorm import EPS


def forward(x, weight, bias=None, eps=EPS):
    """minigpt.nn.layernorm.forward: y, and the cache (xhat, rstd, weight, has_bias)."""
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


def backward(dout, cache):
    """minigpt.nn.layernorm.backward: dx, and {"weight": dw, "bias": db}."""
    xhat, rstd, weight, has_bias = cache
    if array_module(xhat) is not np:
        dx, dw, db = layernorm_cuda.layernorm_backward_cuda(dout, xhat, rstd, weight)
        return dx, ({"weight": dw, "bias": db} if has_bias else {"weight": dw})
    C = xhat.shape[-1]
    dout2 = dout.reshape(-1, C)
    grads = {"weight": sum_first_axis(dout2 * xhat.reshape(-1, C))}  # dw = sum over rows of dout * xhat
    if has_bias:
        grads["bias"] = sum_first_axis(dout2)  # db = sum over rows of dout
    dx = dout * weight  # dxhat, (..., C); becomes dx in place
    mean_dxhat = sum_last_axis(dx) * (1.0 / C)  # mean(dxhat), (..., 1)
    mean_dxhat_xhat = sum_last_axis(dx * xhat) * (1.0 / C)  # mean(dxhat * xhat), (..., 1)
    dx -= mean_dxhat
    dx -= xhat * mean_dxhat_xhat
    dx *= rstd
    return dx, grads
