"""Scaled causal softmax, fast: must equal minigpt.nn.softmax.forward / .backward.

NumPy arrays go to twins that add the mask as a (Tq, Tk) term of 0 or -inf (a
broadcast add is several times faster than a masked assignment over the leading
axes), sum rows as BLAS matrix-vector products (backend.sum_last_axis) and reuse
their buffers; CuPy arrays go to the CUDA kernels of minigpt/kernels/softmax_cuda.py,
which compute the same formulas one warp per row.
"""

import functools

import numpy as np

from minigpt.backend import array_module, sum_last_axis
from minigpt.kernels import softmax_cuda
from minigpt.nn.softmax import causal_mask


def forward(scores, scale):
    """minigpt.nn.softmax.forward: probs, and the cache (probs, scale)."""
    if array_module(scores) is np:
        probs = forward_numpy(scores, scale)
    else:
        probs = softmax_cuda.causal_softmax_forward_cuda(scores, scale)
    return probs, (probs, scale)


def backward(dout, cache):
    """minigpt.nn.softmax.backward: dscores = s * p * (dout - sum_j dout_j p_j), and {}."""
    probs, scale = cache
    if array_module(probs) is np:
        return backward_numpy(dout, probs, scale), {}
    return softmax_cuda.causal_softmax_backward_cuda(dout, probs, scale), {}


def forward_numpy(scores, scale):
    probs = scores * scale  # z, a new array: scores stay untouched
    mask_add = _mask_add(*scores.shape[-2:], scores.dtype)  # (Tq, Tk), or None: nothing hidden
    if mask_add is not None:
        probs += mask_add
    probs -= probs.max(axis=-1, keepdims=True)  # z - m
    np.exp(probs, out=probs)  # exp(-inf) = 0: masked entries are exactly 0
    probs *= 1.0 / sum_last_axis(probs)  # one division per row, not per entry
    return probs


@functools.lru_cache(maxsize=32)
def _mask_add(t_q, t_k, dtype):
    """The causal mask as a read-only additive term of 0 and -inf, made once per shape (every layer and block
    of a step shares it); None when one query row, the last position, sees every key (a decoding step)."""
    if t_q == 1:
        return None
    mask_add = np.where(causal_mask(np, t_q, t_k), -np.inf, 0.0).astype(dtype)
    mask_add.flags.writeable = False
    return mask_add


def backward_numpy(dout, probs, scale):
    dscores = dout * probs  # dout_j p_j
    row_dot = sum_last_axis(dscores)  # sum_j dout_j p_j, (..., Tq, 1)
    np.subtract(dout, row_dot, out=dscores)  # reuse the buffer: dout_k - sum_j dout_j p_j
    dscores *= probs
    dscores *= scale
    return dscores
