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
"""

from minigpt.backend import sum_first_axis, sum_last_axis

EPS = 1e-5


def forward(x, weight, bias=None, eps=EPS):
    """x: (..., C), weight/bias: (C,) -> y: (..., C)."""
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
