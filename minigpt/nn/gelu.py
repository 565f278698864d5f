"""GELU activation, GPT-2's tanh approximation (Hugging Face's "gelu_new").

Forward:

    gelu(x) = 0.5 x (1 + t),   t = tanh(u),   u = sqrt(2/pi) (x + 0.044715 x^3)

Backward: dx = dy * gelu'(x). The product rule on 0.5 x (1 + t), and the chain
rule through t = tanh(u), with tanh' = 1 - tanh^2 written through t itself (the
textbook 1/cosh^2(u) overflows for large |u|):

    gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,    du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)

For large |x|, t is exactly +-1 and gelu' exactly 1 or 0. The input x is the
whole cache. NumPy arrays are computed here; CuPy arrays go to the CUDA kernels
in minigpt/kernels/gelu_cuda.py, which evaluate the same formulas in the same order.
"""

import math

import numpy as np

from minigpt.backend import array_module

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_COEFF = 0.044715


def forward(x):
    """x: any shape -> gelu(x), and x as the cache."""
    if array_module(x) is np:
        return forward_numpy(x), x
    from minigpt.kernels import gelu_cuda  # here, not at the top: breaks a cycle (gelu_cuda reads our constants)

    return gelu_cuda.gelu_forward_cuda(x), x


def backward(dy, x):
    """Returns dx = dy * gelu'(x) and {} (no parameters)."""
    if array_module(x) is np:
        return backward_numpy(dy, x), {}
    from minigpt.kernels import gelu_cuda  # here, not at the top: breaks a cycle (see forward)

    return gelu_cuda.gelu_backward_cuda(dy, x), {}


# The NumPy twins build each formula in place in one or two buffers: about half the
# forward's time and 30% less backward than the formula as one expression (measured on MLP-sized arrays).


def _tanh_u(x):
    # t = tanh(sqrt(2/pi) (x + 0.044715 x^3)), as tanh(((0.044715 x^2 + 1) x) sqrt(2/pi)) in place
    u = x * x
    u *= GELU_COEFF
    u += 1.0
    u *= x
    u *= SQRT_2_OVER_PI
    return np.tanh(u, out=u)


def forward_numpy(x):
    # gelu(x) = 0.5 x (1 + t), in place
    y = _tanh_u(x)
    y += 1.0
    y *= x
    y *= 0.5
    return y


def backward_numpy(dy, x):
    t = _tanh_u(x)
    # dx = (du/dx x (1 - t^2) + t + 1) 0.5 dy,  du/dx = (3 * 0.044715 x^2 + 1) sqrt(2/pi), in place
    dx = x * x
    dx *= 3.0 * GELU_COEFF
    dx += 1.0
    dx *= SQRT_2_OVER_PI  # du/dx
    dx *= x
    one_minus_t2 = t * t
    np.subtract(1.0, one_minus_t2, out=one_minus_t2)
    dx *= one_minus_t2
    dx += t
    dx += 1.0
    dx *= 0.5
    dx *= dy
    return dx
