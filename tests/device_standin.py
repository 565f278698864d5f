"""A counting stand-in for CuPy over NumPy: every device operation CuPy would launch, counted by kind.

`installed()` puts a fake `cupy` (and `cupy.cuda`, `cupyx`) in
sys.modules. Its arrays are `ndarray`, a NumPy subclass whose type says
"cupy" to backend.array_module, so minigpt takes its GPU branches. Each
operation adds to `LAUNCHES`, keyed by kind, the device launches real CuPy
makes for it:

* an element-wise ufunc or operator, a reduction (sum, max), a fill
  (`ones`, `zeros`: a memset), an assignment `a[...] = b`, a fancy-index read,
  `astype`, `copy`, `ascontiguousarray` of a strided array, a `reshape` that
  must copy, `concatenate`, `where`, `vdot`, a random draw, `cupyx.scatter_add`:
  one each;
* `a @ b`: one GEMM, plus one copy for each operand CuPy copies first (for
  stacks of matrices (ndim > 2) every operand that is not C-contiguous; for
  2-D, one that is neither C- nor F-contiguous);
* a RawKernel or ElementwiseKernel call, a cuBLAS gemmStridedBatchedEx: one.

Kernels compute nothing here (their outputs hold whatever `empty` gave), so
the values are meaningless: this counts launches along the code path a step
takes, which does not depend on the values. A test may give them values:
ELEMENTWISE_TWINS maps an ElementwiseKernel's name to a NumPy function, and a
kernel module's `raw_kernel` can be pointed at tests/cuda_host.py's host build
(tests/test_gpu_path_on_cpu.py does both). It is not yet the strict stand-in
of issue 14 item 4 (host/device mixing is not refused); syncs and copies to the
host are counted under "sync" and "d2h".
"""

import collections
import contextlib
import sys
import types

import numpy as np

LAUNCHES = collections.Counter()
TRANSFERS = []  # ("d2h" or "h2d", bytes) of every copy between host and device


def count(kind, n=1):
    LAUNCHES[kind] += n


class ndarray(np.ndarray):  # noqa: N801 (cupy's name)
    """A 'device' array: NumPy memory, CuPy's type name, every operation counted."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        host_inputs = [x.view(np.ndarray) if isinstance(x, ndarray) else x for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, ndarray) else o for o in out)
        if ufunc is np.matmul:
            _count_matmul(*host_inputs)
        else:
            count("reduction" if method == "reduce" else "elementwise")
        with np.errstate(all="ignore"):  # kernels leave garbage (see above): overflow means nothing here
            result = getattr(ufunc, method)(*host_inputs, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __setitem__(self, key, value):
        count("copy" if isinstance(value, np.ndarray) and np.ndim(value) else "fill")
        super().__setitem__(_host_key(key), value.view(np.ndarray) if isinstance(value, ndarray) else value)

    def __getitem__(self, key):
        if _is_fancy(key):
            count("gather")
        return super().__getitem__(_host_key(key))

    def astype(self, dtype, copy=True, **kwargs):
        if copy or np.dtype(dtype) != self.dtype:
            count("copy")
        return _wrap(self.view(np.ndarray).astype(dtype, copy=copy, **kwargs))

    def copy(self, order="C"):
        count("copy")
        return _wrap(self.view(np.ndarray).copy(order))

    def reshape(self, *shape, **kwargs):
        result = super().reshape(*shape, **kwargs)
        if not np.may_share_memory(result, self):
            count("copy")
        return result

    def ravel(self, order="C"):
        return self.reshape(-1)

    def get(self):
        count("d2h")
        TRANSFERS.append(("d2h", self.nbytes))
        count("sync")
        return np.array(self.view(np.ndarray))

    def item(self):
        count("sync")
        return self.view(np.ndarray).item()

    def __float__(self):
        count("sync")
        return float(self.view(np.ndarray))

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.view(np.ndarray).ctypes.data)


ndarray.__module__ = "cupy"


def _wrap(x):
    return np.asarray(x).view(ndarray)


def _host_key(key):
    if isinstance(key, tuple):
        return tuple(k.view(np.ndarray) if isinstance(k, ndarray) else k for k in key)
    return key.view(np.ndarray) if isinstance(key, ndarray) else key


def _is_fancy(key):
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (np.ndarray, list)) for k in keys)


def _count_matmul(a, b):
    for x in (a, b):
        if x.ndim > 2 and not x.flags.c_contiguous:
            count("copy")
        elif x.ndim == 2 and not (x.flags.c_contiguous or x.flags.f_contiguous):
            count("copy")
    count("gemm")


# -- the module ------------------------------------------------------------------------


def _counted(kind, function):
    def run(*args, **kwargs):
        count(kind)
        args = [a.view(np.ndarray) if isinstance(a, ndarray) else a for a in args]
        if kind == "copy" and len(args) > 0 and isinstance(args[0], (list, tuple)):
            args[0] = [a.view(np.ndarray) if isinstance(a, ndarray) else a for a in args[0]]
        return _wrap(function(*args, **kwargs))

    return run


def asarray(x, dtype=None):
    if isinstance(x, ndarray):
        return x if dtype is None or x.dtype == dtype else x.astype(dtype)
    count("h2d")
    host = np.asarray(x, dtype=dtype)
    TRANSFERS.append(("h2d", host.nbytes))
    return _wrap(host)


def ascontiguousarray(x, dtype=None):
    if isinstance(x, ndarray) and x.flags.c_contiguous and (dtype is None or x.dtype == dtype):
        return x
    if isinstance(x, ndarray):
        count("copy")
        return _wrap(np.ascontiguousarray(x.view(np.ndarray), dtype=dtype))
    return asarray(np.ascontiguousarray(x, dtype=dtype))


def empty(shape, dtype=np.float64):
    return _wrap(np.empty(shape, dtype=dtype))


def empty_like(x, dtype=None):
    return _wrap(np.empty_like(x.view(np.ndarray) if isinstance(x, ndarray) else x, dtype=dtype))


class Generator:
    def __init__(self, seed=None):
        self._rng = np.random.default_rng(seed)

    def random(self, shape, dtype=np.float64):
        count("random")
        return _wrap(self._rng.random(shape, dtype=dtype))

    def standard_normal(self, shape, dtype=np.float64):
        count("random")
        return _wrap(self._rng.standard_normal(shape, dtype=dtype))

    def integers(self, *args, **kwargs):
        count("random")
        return _wrap(self._rng.integers(*args, **kwargs))


ELEMENTWISE_TWINS = {}  # kernel name -> a NumPy function computing it; a test may fill it (else: no values)


class ElementwiseKernel:
    def __init__(self, in_params, out_params, operation, name, **kwargs):
        self.name = name
        self.n_out = len(out_params.split(","))

    def __call__(self, *args):
        count(f"kernel {self.name}")
        if self.name in ELEMENTWISE_TWINS:
            return _wrap(ELEMENTWISE_TWINS[self.name](*(a.view(np.ndarray) for a in args)))
        shape = np.broadcast_shapes(*(np.shape(a) for a in args if isinstance(a, np.ndarray)))
        dtype = next(a.dtype for a in args if isinstance(a, np.ndarray))
        if self.name == "minigpt_probe":  # the import probe adds 1: give it its 1
            return _wrap(args[0].view(np.ndarray) + 1)
        return empty(shape, dtype)


class RawModule:
    def __init__(self, code, name_expressions):
        self.names = name_expressions

    def get_function(self, name):
        assert name in self.names, name

        def launch(grid, block, args, shared_mem=0):
            count(f"kernel {name.split('<')[0]}")

        return launch


def _gemm_strided_batched_ex(*args):
    count("gemm")


def make_module():
    cupy = types.ModuleType("cupy")
    cupy.ndarray = ndarray
    for name in ("float32", "float64", "int32", "int64", "bool_", "dtype", "newaxis"):
        setattr(cupy, name, getattr(np, name))
    for name in dir(np):  # the ufuncs (exp, log, sqrt, maximum, ...): counted by ndarray.__array_ufunc__
        if isinstance(getattr(np, name), np.ufunc):
            setattr(cupy, name, getattr(np, name))
    cupy.asarray, cupy.ascontiguousarray = asarray, ascontiguousarray
    cupy.empty, cupy.empty_like = empty, empty_like
    for name in ("zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "arange", "triu"):
        setattr(cupy, name, _counted("fill", getattr(np, name)))
    for name in ("where", "vdot"):
        setattr(cupy, name, _counted("elementwise", getattr(np, name)))
    cupy.concatenate = _counted("copy", np.concatenate)
    cupy.inf = np.inf
    for name in ("argsort", "partition"):
        setattr(cupy, name, _counted("sort", getattr(np, name)))
    cupy.take_along_axis = _counted("gather", np.take_along_axis)
    cupy.cumsum = _counted("scan", np.cumsum)
    cupy.argmax = _counted("reduction", np.argmax)
    cupy.random = types.SimpleNamespace(default_rng=Generator)
    cupy.ElementwiseKernel, cupy.RawModule = ElementwiseKernel, RawModule

    cuda = types.ModuleType("cupy.cuda")
    cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
    cuda.cublas = types.SimpleNamespace(gemmStridedBatchedEx=_gemm_strided_batched_ex)
    cuda.device = types.SimpleNamespace(get_cublas_handle=lambda: 0)
    cuda.Device = lambda *args: types.SimpleNamespace(synchronize=lambda: count("sync"))
    cupy.cuda = cuda

    cupyx = types.ModuleType("cupyx")

    def scatter_add(target, indices, values):
        count("scatter_add")
        np.add.at(target.view(np.ndarray), indices.view(np.ndarray), values.view(np.ndarray))

    cupyx.scatter_add = scatter_add
    return cupy, cuda, cupyx


def _clear_kernel_caches():
    """Kernels built by the stand-in must not outlive it (nor real ones leak into it)."""
    from minigpt.kernels import build_cuda

    for name in ("elementwise_kernel", "_raw_module", "_raw_function"):
        cached = getattr(build_cuda, name, None)
        if cached is not None:
            cached.cache_clear()


@contextlib.contextmanager
def installed():
    """Within the block, `import cupy` gives the stand-in; LAUNCHES starts at zero. Yields the fake module."""
    from minigpt import backend

    cupy, cuda, cupyx = make_module()
    saved = {name: sys.modules.get(name) for name in ("cupy", "cupy.cuda", "cupyx")}
    probed = getattr(backend, "_PROBED", None)
    sys.modules.update({"cupy": cupy, "cupy.cuda": cuda, "cupyx": cupyx})
    _clear_kernel_caches()
    LAUNCHES.clear()
    TRANSFERS.clear()
    try:
        yield cupy
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        if probed is not None:
            backend._PROBED = probed
        _clear_kernel_caches()
