"""GELU activation layer (GPT-2's tanh approximation); the math lives in minigpt.kernels.gelu.

    gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))

Backward: dx = dy * gelu'(x), with gelu' derived in minigpt/kernels/gelu.py via
1 - tanh^2 (never cosh, which overflows). The input x is the whole cache.
"""

from minigpt.kernels import gelu_backward, gelu_forward


def forward(x):
    return gelu_forward(x), x


def backward(dy, x):
    return gelu_backward(dy, x), {}
