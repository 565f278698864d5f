"""One AdamW step over a flat buffer, with gradient clipping folded in: NumPy twin + CUDA kernel.

For every element i of the flat (shard of the) buffers p, g, m, v, with the
clipping factor from the squared global gradient norm `sumsq`

    coef = min(max_norm / (sqrt(sumsq) + 1e-6), 1)       (1 when max_norm <= 0: no clipping)
    g = g * coef
    m = m + (1 - b1) (g - m)                              lerp form of b1 m + (1 - b1) g
    v = v + (1 - b2) (g^2 - v)
    p = p * (1 - lr wd)                                   only for i < decay_end (the 2-D tensors)
    p = p - step_size * m / (sqrt(v) * inv_sqrt_bias2 + eps)

with step_size = lr / (1 - b1^t) and inv_sqrt_bias2 = 1 / sqrt(1 - b2^t): the
same operations, in the same order, as `minigpt.optim.AdamW` and
`clip_grad_norm` apply per tensor. On the GPU this is one kernel launch for the
whole buffer. On the CPU the twin runs the passes block by block: a block of
CHUNK elements of all five arrays stays in cache across its ~15 passes, where
whole-buffer passes would stream every array from memory 15 times (a
micro-benchmark of the passes alone on 2 EPYC cores, float32, GPT-2 124M's
parameter count: 197 ms in 256K-element blocks, 351 ms in whole-buffer passes,
282 ms per tensor; blocks of 64K and 1M elements took 203 and 208 ms).
"""

import math
from typing import NamedTuple

import numpy as np

from minigpt.backend import array_module

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


def adamw_step_numpy(p, g, m, v, sumsq, max_norm: float, decay_end: int, s: AdamWScalars) -> None:
    """The update in place on 1-D NumPy arrays p, m, v (g is scaled in place when clipping)."""
    coef = clip_coefficient(sumsq, max_norm, g.dtype) if max_norm > 0 else None
    scratch = np.empty(min(CHUNK, p.size), dtype=p.dtype)
    for a in range(0, p.size, CHUNK):
        b = min(a + CHUNK, p.size)
        _adamw_block(p[a:b], g[a:b], m[a:b], v[a:b], scratch[: b - a], coef, decay_end - a, s)


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


def adamw_step(p, g, m, v, sumsq, max_norm: float, decay_end: int, s: AdamWScalars) -> None:
    """One AdamW step in place on the 1-D contiguous buffers p, m, v from gradient g (either backend).

    sumsq: the squared global gradient norm, a 0-d or 1-element array on the
    buffers' device (read only when max_norm > 0). decay_end: elements
    [0, decay_end) of p get weight decay.
    """
    if array_module(p) is np:
        adamw_step_numpy(p, g, m, v, sumsq, max_norm, decay_end, s)
        return
    from minigpt.kernels import adamw_cuda

    adamw_cuda.adamw_step_cuda(p, g, m, v, sumsq, max_norm, decay_end, s)
