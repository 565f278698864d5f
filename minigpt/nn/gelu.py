"""GELU activation, GPT-2's tanh approximation (Hugging Face's "gelu_new").

Forward:

    gelu(x) = 0.5 x (1 + t),   t = tanh(u),   u = sqrt(2/pi) (x + 0.044715 x^3)

Backward: dx = dout * gelu'(x). The product rule on 0.5 x (1 + t), and the chain
rule through t = tanh(u), with tanh' = 1 - tanh^2 written through t itself (the
textbook 1/cosh^2(u) overflows for large |u|):

    gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,    du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)

For large |x|, t is exactly +-1 and gelu' exactly 1 or 0. The input x is the
whole cache. (minigpt/fast/gelu.py computes the same in place, and on the GPU.)
"""

import math

from minigpt.backend import array_module

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_COEFF = 0.044715


def forward(x):
    """x: any shape -> gelu(x), and x as the cache."""
    t = array_module(x).tanh(SQRT_2_OVER_PI * (x + GELU_COEFF * x**3))
    return 0.5 * x * (1 + t), x


def backward(dout, x):
    """Returns dx = dout * gelu'(x) and {} (no parameters)."""
    t = array_module(x).tanh(SQRT_2_OVER_PI * (x + GELU_COEFF * x**3))
    du_dx = SQRT_2_OVER_PI * (1 + 3 * GELU_COEFF * x**2)
    return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du_dx), {}
