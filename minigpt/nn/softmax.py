"""Scaled, causal-masked softmax over attention scores (the `p = causal_softmax(a / sqrt(D))` of attention).

Scores arrive as the raw products a = q @ k^T of shape (..., Tq, Tk). Query i sits
at absolute position i + (Tk - Tq) (with a KV cache, the keys include Tk - Tq
earlier positions), so it may attend to keys j <= i + Tk - Tq. Then, per row,

    z_j = s * a_j   (s = 1/sqrt(head_dim)),   m = max_j z_j
    p_j = exp(z_j - m) / sum_j' exp(z_j' - m)            (subtracting m changes nothing but overflow)

and masked entries are exactly 0 (their exp(-inf) is 0).

Backward, one row at a time. Each p_j depends on every z_k of its row:

    dp_j / dz_k = p_j (delta_jk - p_k)

so dz_k = sum_j dp_j p_j (delta_jk - p_k) = p_k (dp_k - sum_j dp_j p_j), and da_k = s * dz_k.
Masked entries have p_k = 0, so they get no gradient without a second mask.

NumPy arrays are computed here; CuPy arrays go to the CUDA kernels in
minigpt/kernels/softmax_cuda.py, which compute the same formulas one warp per row.
"""

import numpy as np

from minigpt.backend import array_module, sum_last_axis
from minigpt.kernels import softmax_cuda


def causal_mask(xp, t_q: int, t_k: int):
    """(Tq, Tk) boolean, True where query i may NOT see key j (j > i + Tk - Tq)."""
    return xp.triu(xp.ones((t_q, t_k), dtype=bool), k=t_k - t_q + 1)


def forward(scores, scale):
    """scores: (..., Tq, Tk), Tq <= Tk -> probs (same shape), the cache (probs, scale)."""
    if array_module(scores) is np:
        probs = forward_numpy(scores, scale)
    else:
        probs = softmax_cuda.causal_softmax_forward_cuda(scores, scale)
    return probs, (probs, scale)


def backward(dprobs, cache):
    """Returns dscores = s * p * (dp - sum_j dp_j p_j) and {} (no parameters)."""
    probs, scale = cache
    if array_module(probs) is np:
        return backward_numpy(dprobs, probs, scale), {}
    return softmax_cuda.causal_softmax_backward_cuda(dprobs, probs, scale), {}


def forward_numpy(scores, scale):
    t_q, t_k = scores.shape[-2:]
    # the mask as an additive (Tq, Tk) term, 0 or -inf: a broadcast add is several
    # times faster than boolean-mask assignment over the leading axes
    mask_add = np.where(causal_mask(np, t_q, t_k), -np.inf, 0.0).astype(scores.dtype)
    probs = scores * scale  # z, a new array: scores stay untouched
    probs += mask_add
    probs -= probs.max(axis=-1, keepdims=True)  # z - m
    np.exp(probs, out=probs)  # exp(-inf) = 0: masked entries are exactly 0
    probs *= 1.0 / sum_last_axis(probs)  # divide by sum_j exp(z_j - m): one division per row, not per entry
    return probs


def backward_numpy(dprobs, probs, scale):
    dscores = dprobs * probs  # dp_j p_j
    row_dot = sum_last_axis(dscores)  # sum_j dp_j p_j, (..., Tq, 1)
    np.subtract(dprobs, row_dot, out=dscores)  # reuse the buffer: dp_k - sum_j dp_j p_j
    dscores *= probs
    dscores *= scale
    return dscores
