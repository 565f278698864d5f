"""CUDA sources kept as data, turned into CuPy kernels only when a GPU array needs one.

Every `*_cuda` module in this package holds its CUDA C++ as module-level
`ElementwiseSource` / `RawSource` constants and lists them in `CUDA_SOURCES`.
The very same text is

* compiled by CuPy (NVRTC) the first time a kernel runs on a GPU, and
* compiled by `nvcc` for sm_80 and sm_90 in the CPU-only tests
  (tests/test_kernels.py), so syntax and type errors fail CI on machines that
  have the CUDA toolkit but no GPU.

CuPy is imported inside the builders, never at module level, so the sources can
be read on machines without it.
"""

import functools
from typing import NamedTuple

# C++ type behind each supported array dtype (the kernels are instantiated for both).
CTYPES = {"float32": "float", "float64": "double"}


class ElementwiseSource(NamedTuple):
    """A `cupy.ElementwiseKernel`: one thread per element.

    CuPy declares every parameter of `in_params` / `out_params` (e.g. "T x",
    "T y") as a reference to the current element (`const T &x = ...`), with `T`
    a typedef for the arrays' C++ type, and runs `operation` once per element.
    `preamble` is placed above the kernel (helper `__device__` functions).
    """

    name: str
    in_params: str
    out_params: str
    operation: str
    preamble: str = ""


class RawSource(NamedTuple):
    """A `cupy.RawModule` of templated `__global__` kernels.

    `name_expressions` are the instantiations to compile, e.g.
    "causal_softmax_forward<float>"; each is fetched by that exact string.
    """

    code: str
    name_expressions: tuple


def check_float_array(x, name: str) -> None:
    """The kernels exist for float32 and float64 only; anything else is a caller's bug."""
    if x.dtype.name not in CTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")


@functools.cache
def elementwise_kernel(source: ElementwiseSource):
    """The `cupy.ElementwiseKernel` for `source` (CuPy compiles it per dtype on first call)."""
    import cupy

    return cupy.ElementwiseKernel(
        source.in_params, source.out_params, source.operation, source.name, preamble=source.preamble
    )


@functools.cache
def _raw_module(source: RawSource):
    import cupy

    return cupy.RawModule(code=source.code, name_expressions=source.name_expressions)


def raw_kernel(source: RawSource, kernel_name: str, dtype):
    """The instantiation `kernel_name<float|double>` of `source` for arrays of `dtype`, looked up once."""
    return _raw_function(source, kernel_name, dtype.name)


@functools.cache
def _raw_function(source: RawSource, kernel_name: str, dtype_name: str):
    # RawModule.get_function builds a new Function object (a driver lookup) on every
    # call; a training step launches the softmax kernels hundreds of times.
    return _raw_module(source).get_function(f"{kernel_name}<{CTYPES[dtype_name]}>")
