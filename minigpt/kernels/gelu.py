"""GELU, tanh approximation (GPT-2's "gelu_new"): NumPy twin + CUDA kernel.

    gelu(x) = 0.5 * x * (1 + tanh(u)),   u = sqrt(2/pi) * (x + 0.044715 * x^3)

Derivative, with t = tanh(u) and dtanh(u)/du = 1 - t^2 (never via cosh, which
overflows for large |u|):

    gelu'(x) = 0.5 * (1 + t) + 0.5 * x * (1 - t^2) * sqrt(2/pi) * (1 + 3 * 0.044715 * x^2)
"""

import math

import numpy as np

from minigpt.backend import array_module

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_COEFF = 0.044715


def _tanh_u(x):
    """tanh(sqrt(2/pi) * (x + 0.044715 x^3)) with x*x*x, not x**3 (a float power is slow)."""
    u = x * x
    u *= GELU_COEFF
    u += 1.0
    u *= x
    u *= SQRT_2_OVER_PI
    return np.tanh(u, out=u)


def gelu_forward_numpy(x):
    t = _tanh_u(x)
    t += 1.0
    t *= x
    t *= 0.5
    return t


def gelu_backward_numpy(dout, x):
    t = _tanh_u(x)
    # 0.5*(1+t) + 0.5*x*(1-t^2)*sqrt(2/pi)*(1+3c x^2), assembled in place
    inner = x * x
    inner *= 3.0 * GELU_COEFF
    inner += 1.0
    inner *= SQRT_2_OVER_PI
    inner *= x
    one_minus_t2 = t * t
    np.subtract(1.0, one_minus_t2, out=one_minus_t2)
    inner *= one_minus_t2
    inner += t
    inner += 1.0
    inner *= 0.5
    inner *= dout
    return inner


def gelu_forward(x):
    """GELU of `x` (any shape, either backend)."""
    if array_module(x) is np:
        return gelu_forward_numpy(x)
    from minigpt.kernels import gelu_cuda

    return gelu_cuda.gelu_forward_cuda(x)


def gelu_backward(dout, x):
    """dL/dx given dL/dgelu(x) = dout and the input x."""
    if array_module(x) is np:
        return gelu_backward_numpy(dout, x)
    from minigpt.kernels import gelu_cuda

    return gelu_cuda.gelu_backward_cuda(dout, x)
