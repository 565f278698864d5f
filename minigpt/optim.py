"""The optimizer, written by hand: AdamW, gradient clipping and nanoGPT's learning-rate schedule.

AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"), with
PyTorch's `torch.optim.AdamW` semantics. At step t, for a parameter p with
gradient g:

    m = b1 * m + (1 - b1) * g                    first moment (running mean of g)
    v = b2 * v + (1 - b2) * g^2                  second moment (running mean of g^2)
    p = p * (1 - lr * wd)                        decoupled weight decay
    p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

The factors 1 / (1 - b^t) undo the bias of m and v towards their zero start.
As in GPT-2/nanoGPT, weight decay applies only to 2-D tensors (the matmul
weights and the embeddings), never to biases or LayerNorm parameters.

Two optimizers compute this. `AdamW` is the textbook form, one tensor at a time,
updating each parameter's own array in place. `FlatAdamW` keeps all parameters
in one flat buffer (the dict's values become views into it) and runs gradient
clipping and AdamW as whole-buffer passes: one CUDA kernel on the GPU, instead
of about fourteen launches per tensor. It is also the data-parallel optimizer:
given a communicator it reduces the gradients with one collective per step, and
with ZeRO-1 keeps m and v only for this rank's shard. Arrays may be NumPy or
CuPy, with no host sync inside a step.
"""

import math
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from minigpt.backend import array_module, to_device, to_host
from minigpt.errors import MinigptError
from minigpt.kernels import adamw_cuda


def _set_hyperparameters(optimizer, lr, betas, eps, weight_decay) -> None:
    """Check AdamW's hyper-parameters and set them, with the step count t = 0, on `optimizer` (both AdamWs)."""
    b1, b2 = betas
    if not lr >= 0 or not 0 <= b1 < 1 or not 0 <= b2 < 1 or not eps >= 0 or not weight_decay >= 0:
        raise MinigptError(
            f"AdamW needs lr >= 0, 0 <= beta1, beta2 < 1, eps >= 0 and weight_decay >= 0; "
            f"got lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}"
        )
    optimizer.lr = lr
    optimizer.betas = (float(b1), float(b2))
    optimizer.eps = eps
    optimizer.weight_decay = weight_decay
    optimizer.t = 0  # steps taken


class AdamW:
    """AdamW over a dict of parameter arrays, updated in place by `step(grads)`."""

    def __init__(self, params: dict, lr: float = 6e-4, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1):
        _set_hyperparameters(self, lr, betas, eps, weight_decay)
        self.params = params
        self.m = {name: array_module(p).zeros_like(p) for name, p in params.items()}
        self.v = {name: array_module(p).zeros_like(p) for name, p in params.items()}
        self._buffer = None  # scratch space for step(), made on first use

    @staticmethod
    def decays(param) -> bool:
        """Weight decay for 2-D tensors (matmul weights, embeddings) only."""
        return param.ndim >= 2

    def step(self, grads: dict, lr: float | None = None) -> None:
        """One AdamW update of every parameter from `grads` (a dict keyed like params).

        Each update is written as in-place passes through one scratch buffer, so a
        step allocates nothing; the moments use the lerp form m += (1 - b1) (g - m).
        """
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        self.t += 1
        step_size = lr / (1 - b1**self.t)
        inv_sqrt_bias2 = 1.0 / math.sqrt(1 - b2**self.t)
        for name, p in self.params.items():
            g, m, v = grads[name], self.m[name], self.v[name]
            xp = array_module(p)
            tmp = self._scratch(xp, p)
            xp.subtract(g, m, out=tmp)  # m = b1 m + (1 - b1) g
            tmp *= 1 - b1
            m += tmp
            xp.multiply(g, g, out=tmp)  # v = b2 v + (1 - b2) g^2
            tmp -= v
            tmp *= 1 - b2
            v += tmp
            if self.weight_decay and self.decays(p):
                p *= 1 - lr * self.weight_decay
            xp.sqrt(v, out=tmp)  # sqrt(v) / sqrt(1 - b2^t) + eps
            tmp *= inv_sqrt_bias2
            tmp += self.eps
            xp.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp

    def _scratch(self, xp, p):
        """A reusable buffer shaped like p, carved from one array as large as the largest parameter."""
        if self._buffer is None or self._buffer.dtype != p.dtype or array_module(self._buffer) is not xp:
            self._buffer = xp.empty(max(int(q.size) for q in self.params.values()), dtype=p.dtype)
        return self._buffer[: p.size].reshape(p.shape)

    def state_dict(self) -> tuple[dict, dict]:
        """(tensors, metadata): host arrays `m.<name>` and `v.<name>`, and the step count and hyper-parameters.

        The split matches safetensors (a flat dict of arrays plus a dict of strings).
        """
        tensors = {}
        for name in self.params:
            tensors[f"m.{name}"] = to_host(self.m[name])
            tensors[f"v.{name}"] = to_host(self.v[name])
        metadata = {"step": str(self.t), "betas": f"[{self.betas[0]}, {self.betas[1]}]", "eps": str(self.eps)}
        return tensors, metadata

    def load_state_dict(self, tensors: dict, metadata: dict) -> None:
        """Restore the moments and step count saved by `state_dict` (onto the params' device)."""
        for name, p in self.params.items():
            for kind, store in (("m", self.m), ("v", self.v)):
                saved = _saved_moment(tensors, f"{kind}.{name}", p.shape)
                device = "cpu" if array_module(p) is np else "gpu"
                store[name][...] = to_device(saved, device, p.dtype)
        self.t = int(metadata["step"])


# ---------------------------------------------------------------------------
# One AdamW step over a flat buffer, with gradient clipping folded in (FlatAdamW's
# update; its CUDA twin is minigpt/kernels/adamw_cuda.py). For every element i of
# the flat (shard of the) buffers p, g, m, v, with `sumsq` the squared global norm:
#
#     coef = min(max_norm / (sqrt(sumsq) + 1e-6), 1)       (1 when max_norm <= 0: no clipping)
#     g = g * coef
#     m = m + (1 - b1) (g - m)                              lerp form of b1 m + (1 - b1) g
#     v = v + (1 - b2) (g^2 - v)
#     p = p * (1 - lr wd)                                   only for i < decay_end (the 2-D tensors)
#     p = p - step_size * m / (sqrt(v) * inv_sqrt_bias2 + eps)
#
# with step_size = lr / (1 - b1^t) and inv_sqrt_bias2 = 1 / sqrt(1 - b2^t): the
# same operations, in the same order, as AdamW.step and clip_grad_norm per tensor.
# On the CPU the passes run block by block, so a block of all five arrays stays in
# cache across its ~15 passes (whole-buffer passes stream every array from memory
# 15 times; scripts/bench/HISTORY.md has the timings).

CHUNK = 1 << 18  # elements per block on the CPU: 5 MiB of float32 over the five arrays, well inside the L3 cache


class AdamWScalars(NamedTuple):
    """The per-step constants of the update, computed on the host (no device sync)."""

    one_minus_b1: float
    one_minus_b2: float
    decay_factor: float  # 1 - lr * weight_decay
    step_size: float  # lr / (1 - b1^t)
    inv_sqrt_bias2: float  # 1 / sqrt(1 - b2^t)
    eps: float

    @classmethod
    def at(cls, t: int, lr: float, betas, eps: float, weight_decay: float) -> "AdamWScalars":
        b1, b2 = betas
        return cls(1 - b1, 1 - b2, 1 - lr * weight_decay, lr / (1 - b1**t), 1.0 / math.sqrt(1 - b2**t), eps)


def clip_coefficient(sumsq, max_norm: float, dtype):
    """min(max_norm / (sqrt(sumsq) + 1e-6), 1) in `dtype`, as `optim.clip_grad_norm` computes it."""
    xp = array_module(sumsq)
    return xp.minimum(max_norm / (xp.sqrt(sumsq) + 1e-6), 1.0).astype(dtype)


_POOLS = {}  # threads -> the executor that runs adamw_step_numpy's blocks (made on first use)


def adamw_step_numpy(p, g, m, v, sumsq, max_norm: float, decay_end: int, s: AdamWScalars, threads: int = 1) -> None:
    """The update in place on 1-D NumPy arrays p, m, v (g is scaled in place when clipping).

    The blocks are independent, so `threads` threads take every threads-th block:
    NumPy's ufuncs run on one core each and release the GIL, so the update is
    about `threads` times faster while memory keeps up, bit for bit the same.
    """
    coef = clip_coefficient(sumsq, max_norm, g.dtype) if max_norm > 0 else None
    starts = range(0, p.size, CHUNK)
    threads = max(1, min(threads, len(starts)))

    def run(share):
        scratch = np.empty(min(CHUNK, p.size), dtype=p.dtype)
        for a in share:
            b = min(a + CHUNK, p.size)
            _adamw_block(p[a:b], g[a:b], m[a:b], v[a:b], scratch[: b - a], coef, decay_end - a, s)

    if threads == 1:
        run(starts)
        return
    pool = _POOLS.get(threads) or _POOLS.setdefault(threads, ThreadPoolExecutor(threads - 1))
    others = [pool.submit(run, starts[i::threads]) for i in range(1, threads)]
    run(starts[::threads])
    for f in others:
        f.result()


def _adamw_block(p, g, m, v, tmp, coef, decay_end, s: AdamWScalars) -> None:
    if coef is not None:
        g *= coef
    np.subtract(g, m, out=tmp)  # m += (1 - b1) (g - m)
    tmp *= s.one_minus_b1
    m += tmp
    np.multiply(g, g, out=tmp)  # v += (1 - b2) (g^2 - v)
    tmp -= v
    tmp *= s.one_minus_b2
    v += tmp
    if decay_end > 0 and s.decay_factor != 1.0:
        p[:decay_end] *= s.decay_factor
    np.sqrt(v, out=tmp)  # step_size * m / (sqrt(v) * inv_sqrt_bias2 + eps)
    tmp *= s.inv_sqrt_bias2
    tmp += s.eps
    np.divide(m, tmp, out=tmp)
    tmp *= s.step_size
    p -= tmp


def adamw_step(p, g, m, v, sumsq, max_norm: float, decay_end: int, s: AdamWScalars, threads: int = 1) -> None:
    """One AdamW step in place on the 1-D contiguous buffers p, m, v from gradient g (either backend).

    sumsq: the squared global gradient norm, a 0-d or 1-element array on the
    buffers' device (read only when max_norm > 0). decay_end: elements
    [0, decay_end) of p get weight decay. threads: CPU threads sharing the blocks.
    """
    if array_module(p) is np:
        adamw_step_numpy(p, g, m, v, sumsq, max_norm, decay_end, s, threads)
        return
    adamw_cuda.adamw_step_cuda(p, g, m, v, sumsq, max_norm, decay_end, s)


class FlatAdamW:
    """AdamW and gradient clipping as whole-buffer passes over one flat buffer; over ranks, optionally ZeRO-1.

    Layout. The constructor copies every parameter into one flat array and
    replaces the values of `params` by views into it: the names and shapes stay
    (files, `model.params`), the model's layers read the views from the dict,
    and `GPT.replica` shares the dict, so every replica sees each update. The
    2-D tensors (weight decay) come first, so decay is the slice [0, decay_end).
    Gradients are packed each step into a second flat buffer of the same layout
    (`grad_views` are its per-name views: a caller that accumulates gradients
    straight into them skips the pack, one copy of the gradients; its cost is in
    scripts/bench/HISTORY.md). The parameters, being views, are never copied.

    One step, with N = comm.world_size ranks, each holding its own gradient sums
    (scaled so that their sum over ranks is the gradient of the global mean loss):

        zero=False: all_reduce(flat_grads)          every rank updates the whole buffer
        zero=True:  reduce_scatter(flat_grads)      rank r gets the summed shard r (S = P / N elements)
                    all_reduce(sum g^2 of shard)    1 element, only when clipping
                    update shard r (p, m, v)        m and v exist only for this shard (ZeRO-1)
                    all_gather(shard r of p)        every rank gets every updated shard

    P is the parameter count rounded up to a multiple of N (zero=True): the
    padding is zero and stays zero (g = m = v = 0 gives a zero update). Then
    clipping by the global norm and AdamW run as one kernel on the GPU (a few
    block-wise passes on the CPU): adamw_step below. comm=None means one
    process; arrays are NumPy or CuPy (with a communicator for that device),
    and nothing in `step` syncs with the host.
    """

    def __init__(self, params: dict, lr: float = 6e-4, betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.1, comm=None, zero: bool = False, threads: int = 1):
        _set_hyperparameters(self, lr, betas, eps, weight_decay)
        self.threads = int(threads)  # CPU threads for the update (the trainer gives its worker count)
        xp, dtype = _common_array_module_and_dtype(params)
        self.params = params
        self.comm = comm
        self.rank, self.world_size = (0, 1) if comm is None else (comm.rank, comm.world_size)
        self.sharded = zero and self.world_size > 1

        decayed_first = sorted(params, key=lambda name: not AdamW.decays(params[name]))  # stable sort
        self.layout = {}  # name -> (start, end, shape) in the flat buffers
        start = 0
        for name in decayed_first:
            p = params[name]
            self.layout[name] = (start, start + int(p.size), tuple(p.shape))
            start += int(p.size)
        self.numel = start
        self.decay_end = sum(int(params[name].size) for name in params if AdamW.decays(params[name]))
        padded = -(-self.numel // self.world_size) * self.world_size if self.sharded else self.numel

        self.flat_params = xp.zeros(padded, dtype=dtype)  # (P,)
        for name, (a, b, _) in self.layout.items():
            view = self.flat_params[a:b].reshape(params[name].shape)
            view[...] = params[name]
            params[name] = view  # same key: the dict keeps its order; the old array is freed here
        self._param_views = dict(params)
        # allocated after the packing: the memory the parameters were loaded into, now free, can hold it
        # (a host heap that keeps freed memory would otherwise hold P more at the peak: minigpt.host_memory)
        self.flat_grads = xp.zeros(padded, dtype=dtype)  # (P,)
        self.grad_views = {name: self.flat_grads[a:b].reshape(shape) for name, (a, b, shape) in self.layout.items()}

        shard = padded // self.world_size if self.sharded else padded  # S
        self.shard_start = self.rank * shard if self.sharded else 0
        self.m = xp.zeros(shard, dtype=dtype)  # (S,) this rank's moments only
        self.v = xp.zeros(shard, dtype=dtype)
        self._param_shard = self.flat_params[self.shard_start : self.shard_start + shard]
        self._grad_shard = xp.empty(shard, dtype=dtype) if self.sharded else self.flat_grads
        # all_gather's send buffer: MPI forbids a send buffer inside the receive buffer
        self._gather_send = xp.empty(shard, dtype=dtype) if self.sharded else None
        self._shard_decay_end = min(max(self.decay_end - self.shard_start, 0), shard)
        self._sumsq = xp.zeros(1, dtype=dtype)  # sum of g^2 over the shard, then over the ranks

    def step(self, grads: dict, lr: float | None = None, grad_clip: float = 0.0, before_update=None):
        """One clipped AdamW step from this rank's `grads` (keyed like params); the global norm before clipping.

        grad_clip <= 0: no clipping, and None is returned (the norm is not computed).
        The norm is a 0-d array on the device (no host sync); read it with `backend.scalar`.
        before_update(norm), when given, is called once the gradients are summed over
        the ranks (the norm is then always computed); returning True skips the update,
        leaving the parameters, the moments and the step count as they were
        (minigpt.health's spike skipping).
        """
        lr = self.lr if lr is None else lr
        xp = array_module(self.flat_grads)
        self._check_params_are_views()
        self.t += 1
        for name, view in self.grad_views.items():  # pack, in layout order
            g = grads[name]
            if g is not view:
                view[...] = g
        if self.sharded:
            self.comm.reduce_scatter(self.flat_grads, self._grad_shard)
        elif self.world_size > 1:
            self.comm.all_reduce(self.flat_grads)
        g = self._grad_shard  # the summed gradient: this rank's shard, or all of it

        sumsq, norm = self._sumsq, None
        if grad_clip > 0 or before_update is not None:
            sumsq = xp.vdot(g, g)
            if self.sharded:  # the shards' sums of squares add up to the global one
                self._sumsq[...] = sumsq
                self.comm.all_reduce(self._sumsq)
                sumsq = self._sumsq.reshape(())
            norm = xp.sqrt(sumsq)
        if before_update is not None and before_update(norm):
            self.t -= 1
            return norm
        scalars = AdamWScalars.at(self.t, lr, self.betas, self.eps, self.weight_decay)
        adamw_step(self._param_shard, g, self.m, self.v, sumsq, grad_clip, self._shard_decay_end, scalars,
                   self.threads)
        if self.sharded:
            self._gather_send[...] = self._param_shard
            self.comm.all_gather(self._gather_send, self.flat_params)
        return norm

    def _check_params_are_views(self) -> None:
        for name, view in self._param_views.items():
            if self.params[name] is not view:
                raise RuntimeError(
                    f"params[{name!r}] was replaced after FlatAdamW was made, so the optimizer no longer updates it: "
                    "load weights before making the optimizer, or copy into the existing arrays"
                )

    def state_dict(self) -> tuple[dict, dict]:
        """(tensors, metadata) exactly as `AdamW.state_dict`: the whole state, whatever the world size.

        With zero=True this is a collective: every rank must call it (each gets the whole state).
        """
        m, v = self._whole(self.m), self._whole(self.v)
        tensors = {}
        for name in self.params:  # the params' order, as AdamW
            a, b, shape = self.layout[name]
            tensors[f"m.{name}"] = m[a:b].reshape(shape)
            tensors[f"v.{name}"] = v[a:b].reshape(shape)
        metadata = {"step": str(self.t), "betas": f"[{self.betas[0]}, {self.betas[1]}]", "eps": str(self.eps)}
        return tensors, metadata

    def _whole(self, shard) -> np.ndarray:
        """A host copy of the whole flat moment buffer (P,), gathered from the ranks when sharded."""
        if self.sharded:
            whole = array_module(shard).empty(shard.size * self.world_size, dtype=shard.dtype)
            self.comm.all_gather(shard, whole)
            return to_host(whole)
        return np.array(to_host(shard))  # a copy: the state must not change under the caller

    def load_state_dict(self, tensors: dict, metadata: dict) -> None:
        """Restore a whole state (from `state_dict` of AdamW or FlatAdamW at any world size); no collective."""
        m = np.zeros(self.flat_params.size, dtype=self.m.dtype)
        v = np.zeros_like(m)
        for name, (a, b, shape) in self.layout.items():
            m[a:b] = _saved_moment(tensors, f"m.{name}", shape).ravel()
            v[a:b] = _saved_moment(tensors, f"v.{name}", shape).ravel()
        device = "cpu" if array_module(self.m) is np else "gpu"
        end = self.shard_start + self.m.size
        self.m[...] = to_device(m[self.shard_start : end], device)
        self.v[...] = to_device(v[self.shard_start : end], device)
        self.t = int(metadata["step"])


def _common_array_module_and_dtype(params: dict):
    """(xp, dtype) shared by every parameter: one flat buffer holds them all."""
    if not params:
        raise ValueError("FlatAdamW needs at least one parameter")
    first = next(iter(params.values()))
    xp, dtype = array_module(first), first.dtype
    for name, p in params.items():
        if array_module(p) is not xp or p.dtype != dtype:
            raise ValueError(f"FlatAdamW needs all parameters on one device in one dtype; {name} differs")
    return xp, dtype


def _saved_moment(tensors: dict, key: str, shape: tuple) -> np.ndarray:
    """tensors[key] as a host array of `shape`, or a MinigptError saying that the state is another model's."""
    if key not in tensors or tuple(tensors[key].shape) != tuple(shape):
        raise MinigptError(f"the optimizer state has no {key} of shape {tuple(shape)}; it belongs to another model")
    return to_host(tensors[key])


def clip_grad_norm(grads: dict, max_norm: float):
    """Scale all gradients in place so their global L2 norm is at most `max_norm`; return the norm before.

        total_norm = sqrt(sum over tensors of sum(g^2))
        g = g * min(1, max_norm / (total_norm + 1e-6))

    The norm stays a 0-d array of the gradients' backend (no host sync); read it
    with `backend.scalar` when it is logged.
    """
    arrays = list(grads.values())
    xp = array_module(arrays[0])
    total_norm = xp.sqrt(sum(xp.vdot(g.ravel(), g.ravel()) for g in arrays))
    coef = xp.minimum(max_norm / (total_norm + 1e-6), 1.0).astype(arrays[0].dtype)
    for g in arrays:
        g *= coef
    return total_norm


def cosine_lr(it: int, learning_rate: float, min_lr: float, warmup_iters: int, lr_decay_iters: int) -> float:
    """nanoGPT's schedule: linear warmup, then cosine decay from learning_rate to min_lr.

        it < warmup_iters:          lr = learning_rate * (it + 1) / (warmup_iters + 1)
        it > lr_decay_iters:        lr = min_lr
        otherwise, with r = (it - warmup_iters) / (lr_decay_iters - warmup_iters):
                                    lr = min_lr + (learning_rate - min_lr) * (1 + cos(pi * r)) / 2
    """
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(lr_decay_iters - warmup_iters, 1)
    return min_lr + (learning_rate - min_lr) * 0.5 * (1.0 + math.cos(math.pi * ratio))
