"""GELU (tanh approximation) forward and backward as CuPy ElementwiseKernels.

The GPU side of `minigpt.fast.gelu` (derivation in minigpt.nn.gelu): the same formulas as its
NumPy twin, evaluated in the same order, one thread per element:

    t  = tanh(u),   u = sqrt(2/pi) * (x + 0.044715 * x^3)
    y  = 0.5 * x * (1 + t)
    dx = dout * (0.5 * (1 + t) + 0.5 * x * (1 - t^2) * sqrt(2/pi) * (1 + 3 * 0.044715 * x^2))

Constants are cast to `T` so float32 arrays are computed in float32, as NumPy
does, instead of being promoted to double. The constants are minigpt.nn.gelu's,
written again here so that kernels/ imports nothing from nn/ (tests/test_kernels.py
pins the two pairs equal).
"""

import math

from minigpt.kernels.build_cuda import ElementwiseSource, check_float_array, elementwise_kernel

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # = minigpt.nn.gelu.SQRT_2_OVER_PI
GELU_COEFF = 0.044715  # = minigpt.nn.gelu.GELU_COEFF

GELU_PREAMBLE = f"""
// tanh(sqrt(2/pi) * (x + 0.044715 x^3)), grouped as ((x*x*c + 1) * x) * sqrt(2/pi) like the NumPy twin.
template <typename T>
__device__ __forceinline__ T gelu_tanh_u(T x) {{
    const T u = ((x * x * T({GELU_COEFF!r}) + T(1)) * x) * T({SQRT_2_OVER_PI!r});
    return tanh(u);
}}
"""

GELU_FORWARD = ElementwiseSource(
    name="minigpt_gelu_forward",
    in_params="T x",
    out_params="T y",
    operation="y = (gelu_tanh_u(x) + T(1)) * x * T(0.5);",
    preamble=GELU_PREAMBLE,
)

GELU_BACKWARD = ElementwiseSource(
    name="minigpt_gelu_backward",
    in_params="T dout, T x",
    out_params="T dx",
    operation=f"""
    const T t = gelu_tanh_u(x);
    // du/dx = sqrt(2/pi) * (1 + 3 * 0.044715 x^2); dtanh/du = 1 - t^2 (never via cosh, which overflows)
    const T du_dx = (x * x * T({3.0 * GELU_COEFF!r}) + T(1)) * T({SQRT_2_OVER_PI!r});
    dx = ((du_dx * x * (T(1) - t * t) + t + T(1)) * T(0.5)) * dout;
    """,
    preamble=GELU_PREAMBLE,
)

CUDA_SOURCES = [GELU_FORWARD, GELU_BACKWARD]


def gelu_forward_cuda(x):
    """GELU of a CuPy array `x` (any shape, float32 or float64); a new array."""
    check_float_array(x, "x")
    return elementwise_kernel(GELU_FORWARD)(x)


def gelu_backward_cuda(dout, x):
    """dL/dx from dL/dy = `dout` and the forward's input `x` (same shape and dtype)."""
    check_float_array(x, "x")
    check_float_array(dout, "dout")
    return elementwise_kernel(GELU_BACKWARD)(dout, x)
