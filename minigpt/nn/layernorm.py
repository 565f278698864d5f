"""LayerNorm over the last axis (eps 1e-5, biased variance), as in GPT-2.

Forward, per row x of C features:

    mu = mean(x),   var = mean((x - mu)^2),   rstd = 1 / sqrt(var + eps)
    xhat = (x - mu) * rstd,                   y = xhat * w + b

Backward, with dout = dL/dy. The parameter gradients sum over rows: dw = sum
dout * xhat, db = sum dout. For x, let dxhat = dout * w (the gradient reaching
xhat). xhat depends on every x_j of its row through mu and rstd:

    d xhat_i / d x_j = rstd * (delta_ij - 1/C - xhat_i * xhat_j / C)

so
    dx_j = rstd * (dxhat_j - mean(dxhat) - xhat_j * mean(dxhat * xhat))

(minigpt/fast/layernorm.py computes the same with fewer passes, and on the GPU.)
"""

from minigpt.backend import array_module

EPS = 1e-5


def forward(x, weight, bias=None, eps=EPS):
    """x: (..., C), weight/bias: (C,) -> y: (..., C), and the cache (xhat, rstd, weight, has_bias)."""
    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / array_module(x).sqrt(var + eps)
    xhat = (x - mu) * rstd  # (..., C)
    y = xhat * weight if bias is None else xhat * weight + bias
    return y, (xhat, rstd, weight, bias is not None)


def backward(dout, cache):
    """Returns dx (..., C) and {"weight": dw, "bias": db}."""
    xhat, rstd, weight, has_bias = cache
    C = xhat.shape[-1]
    grads = {"weight": (dout * xhat).reshape(-1, C).sum(axis=0)}  # dw = sum over rows of dout * xhat
    if has_bias:
        grads["bias"] = dout.reshape(-1, C).sum(axis=0)  # db = sum over rows of dout
    dxhat = dout * weight  # (..., C)
    dx = rstd * (dxhat
                 - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, grads
