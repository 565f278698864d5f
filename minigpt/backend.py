"""The array backend: the one module that knows NumPy from CuPy.

Every layer is written once against an "array module" `xp` that is either
`numpy` (device "cpu") or `cupy` (device "gpu"). Layers never import either
directly: they ask `array_module(x)` for the module of the arrays they are given,
so the same code runs on both.
"""

import functools
import os
from contextlib import contextmanager

import numpy as np

from minigpt.errors import MinigptError
from minigpt.kernels import cublas

DEVICES = ("cpu", "gpu")
DTYPES = ("float32", "float64")

_GPU_HELP = "install the GPU extra (pip install -e '.[gpu]') on a machine with an NVIDIA GPU, or use --device cpu"
_NO_DEVICE_HELP = "check the driver with nvidia-smi, run on a machine with an NVIDIA GPU, or use --device cpu"


def set_tf32(enabled: bool) -> None:
    """Let float32 matmuls on the GPU run on TF32 tensor cores (the default) or not.

    TF32 keeps float32's range and accumulation but rounds the matmul inputs to
    a 10-bit mantissa (about 1e-3 relative); tensor cores run it at several times
    the plain float32 rate on A100/H100. CuPy reads CUPY_TF32 at its first
    float32 matmul and never again, so call this before any GPU work (a CLI
    flag such as --no-tf32 calls it while parsing options). The environment
    variable MINIGPT_TF32=0 turns it off as well. CuPy applies
    TF32 only to 2-D products, which is why the linear layers fold (B, T, C)
    into (B*T, C); attention's stacked products go through batched_matmul,
    which reads tf32_enabled() at each call and asks cuBLAS for TF32 itself.
    """
    os.environ["CUPY_TF32"] = "1" if enabled else "0"


def tf32_enabled() -> bool:
    """Whether float32 GPU matmuls use TF32 (as CuPy will read it at its first matmul)."""
    return int(os.environ.get("CUPY_TF32", "0")) > 0


_GPU_EXTRA_HELP = ("give the CuPy you have its CUDA toolkit extra, NVRTC and the CUDA headers (pip install "
                   "'cupy-cuda13x[ctk]' for cupy-cuda13x, 'cupy-cuda12x[ctk]' for cupy-cuda12x; never a second "
                   "CuPy beside it; docs/gpu-launchers.md), or use --device cpu")
_PROBED = False  # the kernel probe below runs once per process


def _import_cupy():
    """Return the cupy module, or raise a MinigptError that says how to get one."""
    global _PROBED
    cupy = cupy_without_probe()
    if not _PROBED:
        _probe_kernel(cupy)  # on the current device: a rank of N selects its own first (distributed.communicator)
        _PROBED = True
    return cupy


def cupy_without_probe():
    """The cupy module, once it sees a CUDA device; no kernel runs and no device memory is touched."""
    if "CUPY_TF32" not in os.environ:  # set_tf32 or the user's own CUPY_TF32 win over the default
        set_tf32(os.environ.get("MINIGPT_TF32", "1") != "0")
    try:
        import cupy
    except ImportError:
        raise MinigptError(f"--device gpu needs CuPy, which is not installed: {_GPU_HELP}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA driver missing or broken: CuPy raises its own types
        raise MinigptError(f"--device gpu found no usable CUDA device ({err}): CuPy is installed, but the NVIDIA "
                           f"driver or the GPU is missing or does not work; {_NO_DEVICE_HELP}") from None
    if count == 0:
        raise MinigptError(f"--device gpu found no CUDA device: CuPy is installed, but the driver sees no GPU; "
                           f"{_NO_DEVICE_HELP}")
    return cupy


def _probe_kernel(cupy) -> None:
    """Compile and run one tiny kernel, so a broken CUDA set-up is one clear line here, not a traceback later.

    CuPy compiles every kernel at run time with NVRTC, against the CUDA headers.
    A machine with only the NVIDIA driver and a bare cupy-cuda12x (no [ctk]
    extra) passes the device count above and fails at the first kernel. The
    probe adds, not multiplies: 1 to a 1-element array, read back once
    (a host sync, once per process, before any training).
    """
    try:
        kernel = cupy.ElementwiseKernel("T x", "T y", "y = x + T(1)", "minigpt_probe")
        value = float(kernel(cupy.zeros(1, dtype=cupy.float32)).get()[0])
    except Exception as err:  # NVRTC missing, headers missing, driver too old for the toolkit: CuPy's own types
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise MinigptError(f"--device gpu: CuPy sees a GPU but cannot compile and run a CUDA kernel "
                           f"({type(err).__name__}: {first_line}); {_GPU_EXTRA_HELP}") from None
    if value != 1.0:
        raise MinigptError(f"--device gpu: a probe kernel computed 0 + 1 = {value}: the GPU or its driver is not "
                           f"working; {_NO_DEVICE_HELP}")


def gpu_available() -> bool:
    """True when CuPy is installed and sees at least one CUDA device."""
    try:
        _import_cupy()
    except MinigptError:
        return False
    return True


def get_xp(device: str = "cpu"):
    """The array module for a device name: numpy for "cpu", cupy for "gpu"."""
    if device == "cpu":
        return np
    if device == "gpu":
        return _import_cupy()
    raise MinigptError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")


def check_dtype(dtype) -> np.dtype:
    """The numpy dtype for "float32" (training) or "float64" (gradient checks)."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise MinigptError(f"unsupported dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return np.dtype(name)


def array_module(x):
    """numpy or cupy, whichever owns array `x` (numpy for anything that is not a cupy array)."""
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_host(x) -> np.ndarray:
    """A numpy copy (or view, on the CPU) of array `x`."""
    if array_module(x) is np:
        return np.asarray(x)
    return x.get()


def to_device(x, device: str, dtype=None):
    """Array `x` (numpy or cupy) as an array of `device`, optionally cast to `dtype`."""
    xp = get_xp(device)
    if xp is np:
        x = to_host(x)
    out = xp.asarray(x)
    if dtype is not None and out.dtype != dtype:
        out = out.astype(dtype)
    return out


def scalar(x) -> float:
    """A Python float from a 0-d array of either backend (a device sync on the GPU)."""
    return float(to_host(x))


def scatter_add(xp, target, indices, values):
    """target[indices] += values for rows: indices (N,), values (N, C); repeated indices accumulate.

    On CuPy, cupyx.scatter_add (atomic adds). On NumPy, np.add.at works row by
    row and is slow; sorting the indices instead puts equal ones next to each
    other, so one np.add.reduceat sums each run and one fancy-index add writes
    the sums (timings in scripts/bench/HISTORY.md).
    """
    if xp is not np:
        import cupyx

        cupyx.scatter_add(target, indices, values)
        return
    if indices.size == 0:
        return
    order = np.argsort(indices, kind="stable")
    sorted_indices = indices[order]
    starts = np.flatnonzero(np.r_[True, sorted_indices[1:] != sorted_indices[:-1]])  # first row of each run
    target[sorted_indices[starts]] += np.add.reduceat(values[order], starts, axis=0)  # unique rows: no clash


def sum_last_axis(x):
    """x.sum(axis=-1, keepdims=True), the sum of each row; on NumPy as the matrix-vector product x @ ones.

    NumPy reduces over a short last axis one row at a time; BLAS's gemv streams
    through the rows, several times faster (scripts/bench/HISTORY.md). CuPy
    keeps its own reduction, which is fast and, unlike a matmul, never rounds
    its inputs to TF32.
    """
    if array_module(x) is not np:
        return x.sum(axis=-1, keepdims=True)
    return (x @ _ones(x.shape[-1], x.dtype))[..., None]


def sum_first_axis(x2):
    """x2.sum(axis=0), the sum of the rows of a 2-D array; on NumPy as ones @ x2 (see sum_last_axis)."""
    if array_module(x2) is not np:
        return x2.sum(axis=0)
    return _ones(x2.shape[0], x2.dtype) @ x2


@functools.lru_cache(maxsize=64)
def _ones(n: int, dtype) -> np.ndarray:
    """A read-only vector of n ones, made once per length: the row sums above run per layer and per token."""
    ones = np.ones(n, dtype=dtype)
    ones.flags.writeable = False
    return ones


def matmul_into(a, b, out):
    """out[...] = a @ b, written straight into `out` even when it is a strided view.

    NumPy's matmul hands strided outputs to BLAS without a copy; CuPy's does not
    promise to honour a non-contiguous `out`, so there the product is assigned.
    """
    if array_module(out) is np:
        np.matmul(a, b, out=out)
    else:
        out[...] = a @ b
    return out


def batched_matmul(a, b, transpose_a=False, transpose_b=False, out=None, accumulate=False):
    """op(a) @ op(b) over stacks of matrices (..., R, S), op(x) = x^T (last two axes) when asked.

    Written into `out` when given (out += ... when `accumulate`), else a new array.
    NumPy: np.matmul of the transposed views. CuPy: one cuBLAS strided-batched
    GEMM with transpose flags instead of copies, reading strided slices in place
    and, for float32, on TF32 tensor cores when TF32 is on (tf32_enabled): CuPy's
    own matmul of stacks (ndim > 2) copies non-contiguous operands and runs plain
    FP32. On CuPy the leading axes of each operand must fold into one batch
    stride and the last axis must have unit stride (see minigpt.kernels.cublas).
    """
    a_op = a.swapaxes(-1, -2) if transpose_a else a
    b_op = b.swapaxes(-1, -2) if transpose_b else b
    if array_module(a) is np:
        if out is None:
            return a_op @ b_op
        if accumulate:
            out += a_op @ b_op
        else:
            np.matmul(a_op, b_op, out=out)
        return out
    if out is None:
        import cupy

        out = cupy.empty((*a_op.shape[:-1], b_op.shape[-1]), dtype=a.dtype)
        accumulate = False
    cublas.gemm_strided_batched(a, b, out, transpose_a, transpose_b, accumulate, tf32=tf32_enabled())
    return out


def stable_argsort(x):
    """Indices that sort the last axis ascending, equal values in index order (NumPy: kind="stable"; CuPy's is)."""
    if array_module(x) is np:
        return np.argsort(x, axis=-1, kind="stable")
    return array_module(x).argsort(x, axis=-1)  # CuPy accepts no `kind`: its sort is always stable


_THREADPOOL_CONTROLLER = None  # made on first use: most runs never need it


@contextmanager
def blas_threads(n: int):
    """Within the block, NumPy's BLAS (OpenBLAS, MKL, ...) runs each matmul on at most n threads.

    minigpt.parallel runs one worker thread per core, each making its own BLAS
    calls; a BLAS that also spread every call over all cores would have twice as
    many threads as cores, fighting for them (scripts/bench/HISTORY.md).
    threadpoolctl finds the BLAS that NumPy loaded and sets its thread count.
    """
    global _THREADPOOL_CONTROLLER
    if _THREADPOOL_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _THREADPOOL_CONTROLLER = ThreadpoolController()  # inspects the loaded libraries once (about 1 ms)
    with _THREADPOOL_CONTROLLER.limit(limits=n, user_api="blas"):
        yield


def make_rng(device: str = "cpu", seed=None):
    """A seeded random generator of the device's module (numpy or cupy `default_rng`)."""
    return get_xp(device).random.default_rng(seed)
