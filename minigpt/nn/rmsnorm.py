"""RMSNorm over the last axis (LLaMA's norm, `norm = "rmsnorm"`): LayerNorm without the mean and the bias.

Forward, per row x of C features:

    rstd = 1 / sqrt(mean(x^2) + eps),     xhat = x * rstd,     y = xhat * w

Backward. dw = sum over rows of dy * xhat. For x, let g = dy * w (the gradient
reaching xhat). xhat_i = x_i * rstd depends on every x_j of its row through rstd:

    d rstd / d x_j = -rstd^3 x_j / C = -rstd * xhat_j / C
    d xhat_i / d x_j = rstd * (delta_ij - xhat_i * xhat_j / C)

so
    dx_j = rstd * (g_j - xhat_j * mean(g * xhat))

which is LayerNorm's backward without its `- mean(g)` term (no mean was
subtracted). Only `.weight` is a parameter. The same xp code runs on NumPy and CuPy.
"""

from minigpt.backend import sum_first_axis, sum_last_axis

EPS = 1e-5  # as minigpt's LayerNorm


def forward(x, weight, bias=None, eps=EPS):
    """x: (..., C), weight: (C,) -> y: (..., C), and the cache (xhat, rstd, weight)."""
    if bias is not None:
        raise ValueError("RMSNorm has no bias")
    ms = sum_last_axis(x * x) * (1.0 / x.shape[-1])  # mean(x^2), (..., 1)
    rstd = 1.0 / (ms + eps) ** 0.5  # (..., 1)
    xhat = x * rstd  # (..., C)
    return xhat * weight, (xhat, rstd, weight)


def backward(dy, cache):
    """Returns dx (..., C) and {"weight": dw}."""
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    grads = {"weight": sum_first_axis(dy.reshape(-1, C) * xhat.reshape(-1, C))}  # dw = sum over rows of dy * xhat
    g = dy * weight  # (..., C)
    mean_gx = sum_last_axis(g * xhat) * (1.0 / C)  # mean(g * xhat), (..., 1)
    g -= xhat * mean_gx
    g *= rstd
    return g, grads
