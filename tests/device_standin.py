"""A strict stand-in for CuPy over NumPy: what the GPU path may do, refused when it may not, counted when it may.

`installed()` puts a fake `cupy` (and `cupy.cuda`, `cupyx`) in sys.modules.
Its arrays are `ndarray`, a wrapper around a NumPy array (the "device
memory") whose type says "cupy" to backend.array_module, so minigpt takes
its GPU branches. It is a test of discipline, not a GPU:

* **No implicit trip to the host.** `np.asarray(x)` (`__array__`),
  `float(x)`, `int(x)`, `bool(x)`, `x.item()`, `x.tolist()` and a formatted
  value (`f"{x:.3f}"`) raise TypeError. Real CuPy refuses `__array__` the same
  way; the others it allows with a hidden device-to-host copy and
  synchronisation, which is exactly what a training step must not do, so the
  stand-in refuses them too. The only ways to the host are explicit:
  `x.get()` and `cupy.asnumpy(x)` (what backend.to_host and backend.scalar
  call), each counted as one "sync" and one "d2h" copy of its size.
* **No host array in a device operation.** A NumPy array (or list) as an
  operand of a ufunc or operator, a matmul, `where`, `concatenate`, an
  ElementwiseKernel, a RawKernel launch or `cupyx.scatter_add` raises
  TypeError, as in CuPy; so does one as the value of `a[...] = host` or as an
  index array (CuPy refuses some of these and copies others up implicitly, a
  hidden host-to-device copy; the stand-in refuses them all). Python and NumPy
  scalars are fine. The way to the device is explicit, `cupy.asarray(host)` /
  `cupy.array(host)`, counted as "h2d" (not a sync: CuPy stages it through
  pinned memory asynchronously).
* **Every synchronisation is counted** under "sync": `.get()`, `asnumpy`,
  `Device().synchronize()`, a stream's `synchronize()`, and boolean-mask
  indexing (CuPy reads the mask's count back to size the result). `EVENTS`
  lists them in order, with the transfers.

Each operation also adds to `LAUNCHES`, keyed by kind, the device launches
real CuPy makes for it:

* an element-wise ufunc or operator, a reduction (sum, max), a fill
  (`ones`, `zeros`: a memset), an assignment `a[...] = b`, a fancy-index read,
  `astype`, `copy`, `ascontiguousarray` of a strided array, a `reshape` that
  must copy, `concatenate`, `where`, `vdot`, a random draw, `cupyx.scatter_add`:
  one each;
* `a @ b`: one GEMM, plus one copy for each operand CuPy copies first (for
  stacks of matrices (ndim > 2) every operand that is not C-contiguous; for
  2-D, one that is neither C- nor F-contiguous);
* a RawKernel or ElementwiseKernel call, a cuBLAS gemmStridedBatchedEx: one.

Devices. `installed(devices=N)` makes N GPUs visible (1 by default), with
CUDA's current device per host thread (0 until `cupy.cuda.Device(i).use()`).
Each array lives on the device that was current when it was made, and
`ON_DEVICE` counts, per device id, the arrays made and the launches run there:
a rank that selects its GPU first is seen touching no other. An operand on
another device than the current one is refused (CuPy refuses it unless peer
access is set up, which minigpt never does). `cupy.cuda.nccl` is a fake whose
collectives check that they are called on their communicator's device and
compute what NCCL would in a world whose other ranks send zeros.

Launch limits. Every RawKernel launch is checked against CUDA's limits
(`check_launch_config`): gridDim.x <= 2^31 - 1, gridDim.y and .z <= 65535,
at most 1024 threads per block (blockDim.z <= 64), dynamic shared memory
within the 48 KiB a kernel gets without opting in; with or without values.

Generators. `cupy.random.default_rng` (a cuRAND generator: CuPy's XORWOW
allocates and curand_inits 8 x 256 x SMs states, ~13 MB on an H200) adds one to
LAUNCHES["generator"] per generator made.

Values. With `installed()` (values=True) everything computes real numbers:
each ElementwiseKernel by its NumPy twin (ELEMENTWISE_TWINS), each RawKernel
launch by a NumPy twin of the kernel (RAW_TWINS: the layers' own NumPy code,
see minigpt/nn) after its arguments are checked against the kernel's CUDA
signature (a contiguous device array of the right dtype for each pointer, a
scalar of the kernel's precision for each T), and cuBLAS's strided-batched
GEMM by a column-major emulation reading raw memory as cuBLAS does. The CUDA
sources themselves run on the host in tests/cuda_host.py (too slow for whole
runs: a host thread per CUDA thread), and tests/test_kernels_on_host.py
checks them against the same NumPy twins. `installed(values=False)` only
counts (kernels leave their outputs as `empty` gave them), for counting the
launches of a large step or of another tree's minigpt
(scripts/bench/count_launches.py).
"""

import collections
import contextlib
import re
import sys
import threading
import types

import numpy as np

LAUNCHES = collections.Counter()
TRANSFERS = []  # ("d2h" or "h2d", bytes) of every copy between host and device, in order
EVENTS = []  # every synchronisation ("sync", what) and copy ("d2h"/"h2d", bytes), in order
ON_DEVICE = collections.Counter()  # device id -> arrays made and kernels launched on it
_VISIBLE = [1]  # the number of GPUs this process sees (installed(devices=...))
_CURRENT = threading.local()  # CUDA's current device is per host thread


def current_device() -> int:
    return getattr(_CURRENT, "id", 0)

_NO_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy "
                "array explicitly (minigpt: backend.to_host or backend.scalar)")


def count(kind, n=1):
    LAUNCHES[kind] += n


def sync(what):
    count("sync")
    EVENTS.append(("sync", what))


def transfer(direction, nbytes):
    count(direction)
    TRANSFERS.append((direction, nbytes))
    EVENTS.append((direction, nbytes))


def _host_operand_error(what):
    return TypeError(f"Unsupported type <class 'numpy.ndarray'>: a host array in a device operation ({what}); "
                     f"copy it to the device explicitly first (xp.asarray / backend.to_device)")


class ndarray(np.lib.mixins.NDArrayOperatorsMixin):  # noqa: N801 (cupy's name)
    """A 'device' array: NumPy memory behind CuPy's type name; no implicit way to the host, every operation counted.

    Operators come from NDArrayOperatorsMixin, which routes them through
    __array_ufunc__ (as NumPy's own ufuncs called on this array are).
    """

    __slots__ = ("_a", "device_id")
    __array_priority__ = 100

    def __init__(self, memory):
        self._a = memory  # the NumPy array standing in for device memory; never handed out unasked
        self.device_id = current_device()
        ON_DEVICE[self.device_id] += 1

    # -- what a device array tells without a copy ------------------------------------------

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self._a.ctypes.data)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)  # views, as CuPy's iteration gives

    def __repr__(self):
        return f"<stand-in cupy.ndarray shape={self.shape} dtype={self.dtype}>"  # no values: that would be a copy

    # -- the only ways to the host ------------------------------------------------------------

    def get(self):
        sync("ndarray.get")
        transfer("d2h", self.nbytes)
        return np.array(self._a)

    def __array__(self, *args, **kwargs):
        raise TypeError(_NO_IMPLICIT)

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"{_NO_IMPLICIT}: reading a device array's value on the host is a hidden device-to-host "
                        f"copy and synchronisation")

    __float__ = __int__ = __index__ = __complex__ = __bool__ = item = tolist = _refuse

    def __format__(self, spec):
        if spec:
            self._refuse()
        return repr(self)

    # -- element-wise operations, reductions, matmul --------------------------------------------

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        host_inputs = [_operand(x, ufunc.__name__) for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(_operand(o, ufunc.__name__, scalars=False) for o in out)
        if ufunc is np.matmul:
            _count_matmul(*host_inputs)
        else:
            count({"reduce": "reduction", "accumulate": "scan", "at": "scatter_add"}.get(method, "elementwise"))
        with np.errstate(all="ignore"):  # CuPy never warns about overflow or NaN
            result = getattr(ufunc, method)(*host_inputs, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return None if result is None else _wrap_all(result)

    def __array_function__(self, func, types, args, kwargs):
        """numpy.f(device arrays) runs cupy.f, as CuPy's own __array_function__ does (np.concatenate, ...)."""
        implementation = getattr(sys.modules.get("cupy"), func.__name__, None)
        if implementation is None:
            return NotImplemented  # NumPy then raises TypeError: no implementation found
        return implementation(*args, **kwargs)

    def _reduce(self, function, kind, *args, **kwargs):
        count(kind)
        kwargs = {k: (_operand(v, function.__name__) if k == "out" else v) for k, v in kwargs.items()}
        with np.errstate(all="ignore"):
            return _wrap(np.asarray(function(self._a, *args, **kwargs)))

    def sum(self, *args, **kwargs):
        return self._reduce(np.sum, "reduction", *args, **kwargs)

    def max(self, *args, **kwargs):
        return self._reduce(np.max, "reduction", *args, **kwargs)

    def min(self, *args, **kwargs):
        return self._reduce(np.min, "reduction", *args, **kwargs)

    def all(self, *args, **kwargs):
        return self._reduce(np.all, "reduction", *args, **kwargs)

    def any(self, *args, **kwargs):
        return self._reduce(np.any, "reduction", *args, **kwargs)

    def argmax(self, *args, **kwargs):
        return self._reduce(np.argmax, "reduction", *args, **kwargs)

    def cumsum(self, *args, **kwargs):
        return self._reduce(np.cumsum, "scan", *args, **kwargs)

    # -- indexing --------------------------------------------------------------------------------

    def __getitem__(self, key):
        key, fancy, mask = _device_key(key)
        if mask:
            sync("boolean-mask indexing")  # CuPy reads the number of True entries back to size the result
        elif fancy:
            count("gather")
        return _wrap(self._a[key])

    def __setitem__(self, key, value):
        key, _, mask = _device_key(key)
        if mask:
            sync("boolean-mask assignment")
        if isinstance(value, ndarray):
            count("copy" if value.ndim else "fill")
            value = value._a
        elif isinstance(value, (np.ndarray, list, tuple)):
            raise _host_operand_error("the value of an assignment a[...] = host_array")
        else:
            count("fill")
        self._a[key] = value

    # -- shape, copies, casts ------------------------------------------------------------------------

    def astype(self, dtype, copy=True, **kwargs):
        if copy or np.dtype(dtype) != self.dtype:
            count("copy")
        return _wrap(self._a.astype(dtype, copy=copy, **kwargs))

    def copy(self, order="C"):
        count("copy")
        return _wrap(self._a.copy(order))

    def reshape(self, *shape, **kwargs):
        result = self._a.reshape(*shape, **kwargs)
        if not np.may_share_memory(result, self._a):
            count("copy")
        return _wrap(result)

    def ravel(self, order="C"):
        return self.reshape(-1)

    def transpose(self, *axes):
        return _wrap(self._a.transpose(*axes))

    def swapaxes(self, a, b):
        return _wrap(self._a.swapaxes(a, b))

    @property
    def T(self):  # noqa: N802 (NumPy's name)
        return _wrap(self._a.T)


ndarray.__module__ = "cupy"


def host_memory(x):
    """The NumPy array behind a device array (x itself for anything else): for emulating kernels, never counted."""
    return x._a if isinstance(x, ndarray) else x


def _wrap(x):
    return ndarray(np.asarray(x))


def _wrap_all(result):
    return tuple(_wrap(r) for r in result) if isinstance(result, tuple) else _wrap(result)


def _operand(x, what, scalars=True):
    """The memory of a device operand; a host array is refused, as CuPy refuses it (a scalar passes)."""
    if isinstance(x, ndarray):
        _on_current_device(x, what)
        return x._a
    if isinstance(x, (np.ndarray, list, tuple)) or not scalars:
        raise _host_operand_error(what)
    return x


def _on_current_device(x, what):
    if x.device_id != current_device():
        raise ValueError(f"The device where the array resides ({x.device_id}) is different from the current "
                         f"device ({current_device()}): {what}")


def _device_key(key):
    """(the key over NumPy memory, fancy?, boolean mask?); a host index array is refused."""
    keys = key if isinstance(key, tuple) else (key,)
    memory, fancy, mask = [], False, False
    for k in keys:
        if isinstance(k, ndarray):
            fancy = True
            mask |= k.dtype == np.bool_
            k = k._a
        elif isinstance(k, (np.ndarray, list)):
            raise _host_operand_error("an index array on the host (CuPy would copy it up implicitly)")
        memory.append(k)
    return (tuple(memory) if isinstance(key, tuple) else memory[0]), fancy, mask


def _count_matmul(a, b):
    for x in (a, b):
        if x.ndim > 2 and not x.flags.c_contiguous:
            count("copy")
        elif x.ndim == 2 and not (x.flags.c_contiguous or x.flags.f_contiguous):
            count("copy")
    count("gemm")


# -- the module's functions --------------------------------------------------------------------------


def _on_device(kind, function, what=None):
    """cupy.f: NumPy's f over device operands (host arrays refused), one launch of `kind`, a device result."""

    def run(*args, **kwargs):
        count(kind)
        args = [[_operand(a, what or function.__name__) for a in arg] if isinstance(arg, (list, tuple))
                else _operand(arg, what or function.__name__) for arg in args]
        kwargs = {k: _operand(v, what or function.__name__) for k, v in kwargs.items()}
        with np.errstate(all="ignore"):
            return _wrap_all(function(*args, **kwargs))

    run.__name__ = function.__name__
    return run


def _created(kind, function):
    """cupy.zeros and friends: a new device array (a `*_like` may be given any array: only its shape is read)."""

    def run(*args, **kwargs):
        if kind:
            count(kind)
        args = [host_memory(a) for a in args]
        return _wrap(function(*args, **kwargs))

    run.__name__ = function.__name__
    return run


class ufunc:  # noqa: N801 (cupy's name)
    """cupy.exp and the other ufuncs: NumPy's, refusing host arrays, computing on device arrays."""

    def __init__(self, np_ufunc):
        self._ufunc = np_ufunc
        self.__name__ = np_ufunc.__name__

    def _device_args(self, args):
        if any(isinstance(a, (np.ndarray, list, tuple)) for a in args):
            raise _host_operand_error(self.__name__)
        if not any(isinstance(a, ndarray) for a in args):  # scalars only: CuPy gives a 0-d device array
            args = [_wrap(args[0]), *args[1:]]
        return args

    def __call__(self, *args, **kwargs):
        return self._ufunc(*self._device_args(args), **kwargs)  # -> ndarray.__array_ufunc__


def asarray(x, dtype=None):
    if isinstance(x, ndarray):
        return x if dtype is None or x.dtype == dtype else x.astype(dtype)
    host = np.asarray(x, dtype=dtype)
    transfer("h2d", host.nbytes)
    return _wrap(np.array(host))  # device memory of its own: a later change of the host array does not reach it


def array(x, dtype=None, copy=True):
    if isinstance(x, ndarray):
        return x.astype(x.dtype if dtype is None else dtype, copy=copy)
    return asarray(x, dtype)


def asnumpy(x):
    if isinstance(x, ndarray):
        sync("cupy.asnumpy")
        transfer("d2h", x.nbytes)
        return np.array(x._a)
    return np.asarray(x)


def ascontiguousarray(x, dtype=None):
    if not isinstance(x, ndarray):
        raise _host_operand_error("ascontiguousarray")
    if x.flags.c_contiguous and (dtype is None or x.dtype == dtype):
        return x
    count("copy")
    return _wrap(np.ascontiguousarray(x._a, dtype=dtype))


class Generator:
    """cupy.random.Generator: draws on the device (one launch each); no state to save, as CuPy 14's."""

    def __init__(self, seed=None):
        count("generator")
        self._rng = np.random.default_rng(seed)

    def random(self, shape, dtype=np.float64):
        count("random")
        return _wrap(self._rng.random(shape, dtype=dtype))

    def standard_normal(self, shape, dtype=np.float64):
        count("random")
        return _wrap(self._rng.standard_normal(shape, dtype=dtype))


# -- kernels ------------------------------------------------------------------------------------------

ELEMENTWISE_TWINS = {}  # ElementwiseKernel name -> NumPy function of its inputs (filled by installed())
RAW_TWINS = {}  # RawKernel name -> NumPy function of its launch arguments, writing the outputs in place


class ElementwiseKernel:
    def __init__(self, in_params, out_params, operation, name, **kwargs):
        self.name = name

    def __call__(self, *args):
        count(f"kernel {self.name}")
        ON_DEVICE[current_device()] += 1
        memory = [_operand(a, f"ElementwiseKernel {self.name}") for a in args]
        twin = ELEMENTWISE_TWINS.get(self.name, _probe if self.name == "minigpt_probe" else None)
        if twin is not None:
            with np.errstate(all="ignore"):
                return _wrap(twin(*memory))
        if _VALUES:
            raise AssertionError(f"the stand-in has no NumPy twin for ElementwiseKernel {self.name!r}")
        shape = np.broadcast_shapes(*(np.shape(a) for a in memory if isinstance(a, np.ndarray)))
        dtype = next(a.dtype for a in memory if isinstance(a, np.ndarray))
        return empty(shape, dtype)


def _probe(x):
    return x + 1  # backend's import probe adds 1 (with or without values: minigpt checks it)


def kernel_parameters(code: str, name: str):
    """[(C type, name)] of kernel `name`'s parameters, read from the CUDA source."""
    signature = re.search(rf"__global__ void {name}\((.*?)\)\s*\{{", code, re.S).group(1)
    return [(" ".join(d.split()[:-1]), d.split()[-1]) for d in signature.split(",")]


MAX_GRID_X = 2**31 - 1  # CUDA's limits on a launch (compute capability 3.0 and later)
MAX_GRID_YZ = 65535
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_DYNAMIC_SHARED_BYTES = 48 * 1024  # without cudaFuncSetAttribute's opt-in (which minigpt never asks for)


def check_launch_config(kernel_name, grid, block, shared_mem=0):
    """A launch's grid, block and dynamic shared memory against CUDA's limits (AssertionError if out)."""
    grid, block = (*grid, 1, 1)[:3], (*block, 1, 1)[:3]
    assert all(isinstance(n, (int, np.integer)) and n >= 1 for n in (*grid, *block)), \
        f"{kernel_name}: grid {grid} and block {block} need positive integers"
    assert grid[0] <= MAX_GRID_X and max(grid[1:]) <= MAX_GRID_YZ, \
        f"{kernel_name}: grid {grid} is beyond CUDA's ({MAX_GRID_X}, {MAX_GRID_YZ}, {MAX_GRID_YZ})"
    assert all(b <= m for b, m in zip(block, MAX_BLOCK_DIM)) and np.prod(block) <= MAX_THREADS_PER_BLOCK, \
        f"{kernel_name}: block {block} is beyond CUDA's {MAX_THREADS_PER_BLOCK} threads"
    assert 0 <= shared_mem <= MAX_DYNAMIC_SHARED_BYTES, f"{kernel_name}: {shared_mem} bytes of shared memory"


def check_launch(kernel_name, params, args, dtype):
    """A launch's arguments (NumPy memory) against the kernel's CUDA parameters, instantiated for `dtype`."""
    assert len(args) == len(params), f"{kernel_name}: {len(args)} arguments for {len(params)} parameters"
    for (ptype, pname), arg in zip(params, args):
        if ptype.endswith("*"):
            want = np.int64 if "long long" in ptype else dtype
            assert isinstance(arg, np.ndarray) and arg.dtype == want, f"{kernel_name}.{pname}: {arg!r}"
            assert arg.flags.c_contiguous, f"{kernel_name}.{pname} is not contiguous"
        elif ptype == "T":
            assert type(arg) is dtype.type, f"{kernel_name}.{pname}: {type(arg)} is not passed as {dtype}"
        else:
            assert type(arg) is {"int": np.int32, "long long": np.int64}[ptype], f"{kernel_name}.{pname}"


class RawModule:
    def __init__(self, code, name_expressions):
        self.code = code
        self.names = name_expressions

    def get_function(self, expression):
        assert expression in self.names, expression
        name, ctype = expression[:-1].split("<")
        dtype = np.dtype({"float": np.float32, "double": np.float64}[ctype])
        params = kernel_parameters(self.code, name)

        def launch(grid, block, args, shared_mem=0):
            count(f"kernel {name}")
            ON_DEVICE[current_device()] += 1
            check_launch_config(name, grid, block, shared_mem)
            memory = [_operand(a, f"RawKernel {name}") for a in args]
            if not _VALUES:
                return
            check_launch(name, params, memory, dtype)
            with np.errstate(all="ignore"):
                RAW_TWINS[name](*memory)

        return launch


# -- the NumPy twins of the kernels (values=True) ----------------------------------------------------


def _write(out, value):
    out.reshape(-1)[...] = np.asarray(value).reshape(-1)  # out is contiguous (check_launch): a view


def _layernorm_forward(x, weight, bias, y, xhat, rstd, eps, has_bias, n_rows, c):
    from minigpt.fast import layernorm

    out, (xh, rs, _, _) = layernorm.forward(x.reshape(n_rows, c), weight, bias if has_bias else None, eps)
    _write(y, out), _write(xhat, xh), _write(rstd, rs)


def _layernorm_backward_dx(dy, xhat, rstd, weight, dx, n_rows, c):
    from minigpt.fast import layernorm

    g, _ = layernorm.backward(dy.reshape(n_rows, c), (xhat.reshape(n_rows, c), rstd.reshape(n_rows, 1), weight, False))
    _write(dx, g)


def _layernorm_backward_params(dy, xhat, partial, n_rows, c, rows_per_chunk):
    dy, xhat = dy.reshape(n_rows, c), xhat.reshape(n_rows, c)
    partial = partial.reshape(-1, 2, c)
    for chunk, first in enumerate(range(0, n_rows, rows_per_chunk)):
        rows = slice(first, first + rows_per_chunk)
        partial[chunk, 0] = (dy[rows] * xhat[rows]).sum(axis=0)
        partial[chunk, 1] = dy[rows].sum(axis=0)


def _causal_softmax_forward(scores, probs, scale, n_rows, t_q, t_k):
    from minigpt.fast import softmax

    _write(probs, softmax.forward_numpy(scores.reshape(-1, t_q, t_k), scale))


def _causal_softmax_backward(dprobs, probs, dscores, scale, n_rows, t_q, t_k):
    from minigpt.fast import softmax

    _write(dscores, softmax.backward_numpy(dprobs.reshape(-1, t_q, t_k), probs.reshape(-1, t_q, t_k), scale))


def _cross_entropy_forward(logits, targets, loss_rows, lse, n_rows, v):
    z = logits.reshape(n_rows, v)
    m = z.max(axis=1)
    row_lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    valid, in_range = targets != -1, (targets >= 0) & (targets < v)  # -1: ignored; other ids outside: NaN
    picked = z[np.arange(n_rows), np.where(in_range, targets, 0)]
    _write(lse, row_lse)
    _write(loss_rows, np.where(valid, np.where(in_range, row_lse - picked, np.nan), 0))


def _cross_entropy_backward(logits, targets, lse, coef, dlogits, n_rows, v):
    dz = np.exp(logits.reshape(n_rows, v) - lse[:, None])
    valid, in_range = targets != -1, (targets >= 0) & (targets < v)
    dz[np.arange(n_rows), np.where(in_range, targets, 0)] -= in_range
    dz *= np.where(valid, np.where(in_range, coef[0], np.nan), 0).astype(dz.dtype)[:, None]
    _write(dlogits, dz)


def _adamw_flat_step(p, m, v, g, sumsq, max_norm, *scalars_and_sizes):
    from minigpt import optim

    *scalars, decay_end, n = scalars_and_sizes
    assert n == p.size
    optim.adamw_step_numpy(p, g.copy(), m, v, sumsq, float(max_norm), int(decay_end),
                           optim.AdamWScalars(*map(float, scalars)))


def _row_uniform(seeds, out, counter, row_size, n_rows):
    from minigpt.kernels.random_cuda import row_uniform_numpy

    _write(out, row_uniform_numpy(seeds, int(counter), (int(n_rows), int(row_size)), out.dtype))


def _fill_twins():
    from minigpt.fast import gelu

    ELEMENTWISE_TWINS.update({
        "minigpt_gelu_forward": gelu.forward_numpy,
        "minigpt_gelu_backward": gelu.backward_numpy,
    })
    RAW_TWINS.update({
        "layernorm_forward": _layernorm_forward,
        "layernorm_backward_dx": _layernorm_backward_dx,
        "layernorm_backward_params": _layernorm_backward_params,
        "causal_softmax_forward": _causal_softmax_forward,
        "causal_softmax_backward": _causal_softmax_backward,
        "cross_entropy_forward": _cross_entropy_forward,
        "cross_entropy_backward": _cross_entropy_backward,
        "adamw_flat_step": _adamw_flat_step,
        "row_uniform": _row_uniform,
    })


# -- cuBLAS: cublasGemmStridedBatchedEx, emulated over raw memory ----------------------------------------


def column_major(buffer, offset, rows, cols, ld):
    """The rows x cols column-major matrix at `offset` of a flat buffer: (i, j) at offset + i + j * ld."""
    itemsize = buffer.itemsize
    return np.lib.stride_tricks.as_strided(buffer[offset:], shape=(rows, cols), strides=(itemsize, ld * itemsize))


def emulate_gemm_strided_batched(g, alpha, x, beta, y, c):
    """cuBLAS's C_i = alpha op(X_i) op(Y_i) + beta C_i; x, y, c are (flat buffer, element offset)."""
    from minigpt.kernels.cublas import CUBLAS_OP_N

    def operand(buffer_offset, trans, rows, cols, ld, stride, i):
        buffer, offset = buffer_offset
        if trans == CUBLAS_OP_N:
            return column_major(buffer, offset + i * stride, rows, cols, ld)
        return column_major(buffer, offset + i * stride, cols, rows, ld).T

    for i in range(g.batch):
        op_x = operand(x, g.transa, g.m, g.k, g.lda, g.stride_a, i)
        op_y = operand(y, g.transb, g.k, g.n, g.ldb, g.stride_b, i)
        c_i = column_major(c[0], c[1] + i * g.stride_c, g.m, g.n, g.ldc)
        # beta = 0: C is written, never read (cuBLAS's rule: NaN in an uninitialised C must not leak)
        c_i[...] = alpha * (op_x @ op_y) + (beta * c_i if beta != 0 else 0.0)


def emulating_gemm_strided_batched_ex(calls):
    """cupy.cuda.cublas.gemmStridedBatchedEx over host memory: raw pointers in, the column-major emulation run.

    Each call's (data type, compute type, algorithm) is appended to `calls`.
    """
    from minigpt.kernels.cublas import CUBLAS_OP_N, GemmArgs

    def call(handle, transa, transb, m, n, k, alpha, a_ptr, a_type, lda, stride_a, b_ptr, b_type, ldb, stride_b,
             beta, c_ptr, c_type, ldc, stride_c, batch, compute_type, algo):
        dtype = {0: np.float32, 1: np.float64}[a_type]
        assert a_type == b_type == c_type
        calls.append((a_type, compute_type, algo))
        g = GemmArgs(transa, transb, m, n, k, lda, stride_a, ldb, stride_b, ldc, stride_c, batch)

        def buffer(ptr, rows, cols, ld, stride):  # every element a column-major operand can touch
            size = (batch - 1) * stride + (cols - 1) * ld + rows
            return np.ctypeslib.as_array((np.ctypeslib.as_ctypes_type(dtype) * size).from_address(ptr)), 0

        def scalar(ptr):
            return float(np.ctypeslib.as_array((np.ctypeslib.as_ctypes_type(dtype) * 1).from_address(ptr))[0])

        x = buffer(a_ptr, *((m, k) if transa == CUBLAS_OP_N else (k, m)), lda, stride_a)
        y = buffer(b_ptr, *((k, n) if transb == CUBLAS_OP_N else (n, k)), ldb, stride_b)
        c = buffer(c_ptr, m, n, ldc, stride_c)
        emulate_gemm_strided_batched(g, scalar(alpha), x, scalar(beta), y, c)

    return call


def _gemm_strided_batched_ex(*args):
    count("gemm")
    if _VALUES:
        emulating_gemm_strided_batched_ex([])(*args)


# -- the fake modules -------------------------------------------------------------------------------


class _MemoryPool:
    """cupy.get_default_memory_pool(): nothing is pooled here."""

    def free_all_blocks(self):
        pass

    def total_bytes(self):
        return 0


class _Stream:
    ptr = 0

    def synchronize(self):
        sync("Stream.synchronize")


class _Device:
    """cupy.cuda.Device: Device() is the current one; use() makes one current for this host thread."""

    def __init__(self, device_id=None):
        self.id = current_device() if device_id is None else int(device_id)
        if not 0 <= self.id < _VISIBLE[0]:
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id} "
                               f"(the stand-in sees {_VISIBLE[0]})")

    def synchronize(self):
        sync("Device.synchronize")

    def use(self):
        _CURRENT.id = self.id

    def __enter__(self):
        self._before = current_device()
        self.use()
        return self

    def __exit__(self, *exc):
        _CURRENT.id = self._before


class _NcclCommunicator:
    """cupy.cuda.nccl.NcclCommunicator for rank `rank` of a world whose other ranks send zeros.

    Each collective checks that it is called on its communicator's device and
    writes what NCCL would, over raw memory: all_reduce leaves this rank's
    values, reduce_scatter gives this rank's shard of its own buffer, all_gather
    puts its shard in its place and zeros elsewhere.
    """

    def __init__(self, world_size, uid, rank):
        self.device_id, self.world_size, self.rank = current_device(), world_size, rank
        ON_DEVICE[self.device_id] += 1  # NCCL allocates its buffers on the current device

    def _memory(self, ptr, count, dtype):
        self._check()
        ctype = np.ctypeslib.as_ctypes_type({7: np.float32, 8: np.float64}[dtype])
        return np.ctypeslib.as_array((ctype * count).from_address(ptr))

    def _check(self):
        assert current_device() == self.device_id, "an NCCL call from another device than its communicator's"

    def allReduce(self, send, recv, count, dtype, op, stream):  # noqa: N802 (NCCL's names)
        self._memory(recv, count, dtype)[...] = self._memory(send, count, dtype)

    def reduceScatter(self, send, recv, count, dtype, op, stream):  # noqa: N802
        mine = self._memory(send, count * self.world_size, dtype)[self.rank * count:(self.rank + 1) * count]
        self._memory(recv, count, dtype)[...] = mine

    def allGather(self, send, recv, count, dtype, stream):  # noqa: N802
        out = self._memory(recv, count * self.world_size, dtype)
        shard = self._memory(send, count, dtype).copy()
        out[...] = 0
        out[self.rank * count:(self.rank + 1) * count] = shard


def _nccl_module():
    return types.SimpleNamespace(get_unique_id=lambda: (0,) * 128, NcclCommunicator=_NcclCommunicator,
                                 NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_SUM=0)


def make_module():
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "stand-in"
    cupy.ndarray = ndarray
    for name in ("float32", "float64", "int32", "int64", "bool_", "dtype", "newaxis", "inf"):
        setattr(cupy, name, getattr(np, name))
    for name in dir(np):  # exp, log, sqrt, maximum, isfinite, ...: counted by ndarray.__array_ufunc__
        if isinstance(getattr(np, name), np.ufunc):
            setattr(cupy, name, ufunc(getattr(np, name)))
    cupy.asarray, cupy.array, cupy.asnumpy, cupy.ascontiguousarray = asarray, array, asnumpy, ascontiguousarray
    cupy.shape, cupy.ndim = np.shape, np.ndim
    for name in ("empty", "empty_like"):
        setattr(cupy, name, _created(None, getattr(np, name)))
    for name in ("zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "arange"):
        setattr(cupy, name, _created("fill", getattr(np, name)))
    cupy.triu = _on_device("fill", np.triu)
    for name in ("where", "vdot"):
        setattr(cupy, name, _on_device("elementwise", getattr(np, name)))
    cupy.concatenate = _on_device("copy", np.concatenate)
    cupy.stack = _on_device("copy", np.stack)
    for name in ("argsort", "partition"):
        setattr(cupy, name, _on_device("sort", getattr(np, name)))
    cupy.take_along_axis = _on_device("gather", np.take_along_axis)
    cupy.cumsum = _on_device("scan", np.cumsum)
    cupy.argmax = _on_device("reduction", np.argmax)
    default = Generator()
    cupy.random = types.SimpleNamespace(default_rng=Generator, Generator=Generator,
                                        standard_normal=default.standard_normal, random=default.random)
    cupy.ElementwiseKernel, cupy.RawModule = ElementwiseKernel, RawModule
    pool = _MemoryPool()
    cupy.get_default_memory_pool = lambda: pool

    cuda = types.ModuleType("cupy.cuda")
    cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: _VISIBLE[0], runtimeGetVersion=lambda: 0,
                                         getDeviceProperties=lambda device_id: {"name": b"NumPy stand-in"})
    cuda.cublas = types.SimpleNamespace(gemmStridedBatchedEx=_gemm_strided_batched_ex)
    cuda.device = types.SimpleNamespace(get_cublas_handle=lambda: 0)
    cuda.Device = _Device
    cuda.nccl = _nccl_module()
    stream = _Stream()
    cuda.get_current_stream = lambda: stream
    cuda.Stream = types.SimpleNamespace(null=stream)
    cupy.cuda = cuda

    cupyx = types.ModuleType("cupyx")

    def scatter_add(target, indices, values):
        count("scatter_add")
        np.add.at(_operand(target, "scatter_add", scalars=False), _operand(indices, "scatter_add"),
                  _operand(values, "scatter_add"))

    cupyx.scatter_add = scatter_add
    return cupy, cuda, cupyx


def empty(shape, dtype=np.float64):
    return _wrap(np.empty(shape, dtype=dtype))


def _clear_kernel_caches():
    """Kernels built by the stand-in must not outlive it (nor real ones leak into it)."""
    from minigpt.kernels import build_cuda

    for name in ("elementwise_kernel", "_raw_module", "_raw_function"):
        cached = getattr(build_cuda, name, None)
        if cached is not None:
            cached.cache_clear()


_VALUES = False  # whether kernels and cuBLAS compute (installed(values=True)) or are only counted


@contextlib.contextmanager
def installed(values=True, devices=1):
    """Within the block, `import cupy` gives the stand-in; the counts and logs start empty. Yields the fake module.

    values=False: kernels and cuBLAS calls are counted, not computed (their outputs hold what `empty` gave).
    devices: the number of GPUs visible (device 0 current at the start).
    """
    global _VALUES
    from minigpt import backend

    cupy, cuda, cupyx = make_module()
    saved = {name: sys.modules.get(name) for name in ("cupy", "cupy.cuda", "cupyx")}
    saved_twins = dict(ELEMENTWISE_TWINS), dict(RAW_TWINS)
    probed = getattr(backend, "_PROBED", None)
    sys.modules.update({"cupy": cupy, "cupy.cuda": cuda, "cupyx": cupyx})
    _clear_kernel_caches()
    LAUNCHES.clear()
    TRANSFERS.clear()
    EVENTS.clear()
    ON_DEVICE.clear()
    _VISIBLE[0] = devices
    _CURRENT.id = 0
    _VALUES = values
    if values:
        _fill_twins()
    try:
        yield cupy
    finally:
        _VALUES = False
        _VISIBLE[0], _CURRENT.id = 1, 0
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for twins, before in zip((ELEMENTWISE_TWINS, RAW_TWINS), saved_twins):
            twins.clear()
            twins.update(before)
        if probed is not None:
            backend._PROBED = probed
        _clear_kernel_caches()
