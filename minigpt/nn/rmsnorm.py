"""RMSNorm over the last axis (LLaMA's norm, `norm = "rmsnorm"`): LayerNorm without the mean and the bias.

Forward, per row x of C features:

    rstd = 1 / sqrt(mean(x^2) + eps),     xhat = x * rstd,     y = xhat * w

Backward, with dout = dL/dy. dw = sum over rows of dout * xhat. For x, let
dxhat = dout * w (the gradient reaching xhat). xhat_i = x_i * rstd depends on
every x_j of its row through rstd:

    d rstd / d x_j = -rstd^3 x_j / C = -rstd * xhat_j / C
    d xhat_i / d x_j = rstd * (delta_ij - xhat_i * xhat_j / C)

so
    dx_j = rstd * (dxhat_j - xhat_j * mean(dxhat * xhat))

which is LayerNorm's backward without its `- mean(dxhat)` term (no mean was
subtracted). Only `.weight` is a parameter. (minigpt/fast/rmsnorm.py computes the
same with BLAS row sums.)
"""

from minigpt.backend import array_module

EPS = 1e-5  # as minigpt's LayerNorm


def forward(x, weight, bias=None, eps=EPS):
    """x: (..., C), weight: (C,) -> y: (..., C), and the cache (xhat, rstd, weight)."""
    if bias is not None:
        raise ValueError("RMSNorm has no bias")
    rstd = 1.0 / array_module(x).sqrt((x * x).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = x * rstd  # (..., C)
    return xhat * weight, (xhat, rstd, weight)


def backward(dout, cache):
    """Returns dx (..., C) and {"weight": dw}."""
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    grads = {"weight": (dout * xhat).reshape(-1, C).sum(axis=0)}  # dw = sum over rows of dout * xhat
    dxhat = dout * weight  # (..., C)
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, grads
