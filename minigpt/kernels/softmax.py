"""Scaled, causal-masked softmax over attention scores: NumPy twin + CUDA kernel.

Scores arrive as the raw products q @ k^T of shape (..., Tq, Tk). Query i sits at
absolute position i + (Tk - Tq) (with a KV cache, the keys include Tk - Tq earlier
positions), so it may attend to keys j <= i + Tk - Tq. Then

    p_ij = exp(s*a_ij - m_i) / sum_j' exp(s*a_ij' - m_i)    (s = 1/sqrt(head_dim), m_i = row max)

and masked entries are exactly 0.

Backward: for one row, dp -> da with the softmax Jacobian dp_j/dz_k = p_j (delta_jk - p_k):

    dz_k = p_k * (dp_k - sum_j dp_j p_j),     da_k = s * dz_k

Masked entries have p_k = 0, so they get no gradient without a second mask.
"""

import numpy as np

from minigpt.backend import array_module, row_sums


def causal_mask(xp, t_q: int, t_k: int):
    """(Tq, Tk) boolean, True where query i may NOT see key j (j > i + Tk - Tq)."""
    return xp.triu(xp.ones((t_q, t_k), dtype=bool), k=t_k - t_q + 1)


def causal_softmax_forward_numpy(scores, scale):
    t_q, t_k = scores.shape[-2:]
    # the mask as an additive (Tq, Tk) term, 0 or -inf: a broadcast add is several
    # times faster than boolean-mask assignment over the leading axes
    mask_add = np.where(causal_mask(np, t_q, t_k), -np.inf, 0.0).astype(scores.dtype)
    probs = scores * scale  # a new array: scores stay untouched
    probs += mask_add
    probs -= probs.max(axis=-1, keepdims=True)
    np.exp(probs, out=probs)  # exp(-inf) = 0: masked entries are exactly 0
    probs *= 1.0 / row_sums(probs)  # one division per row, not per entry
    return probs


def causal_softmax_backward_numpy(dprobs, probs, scale):
    dscores = dprobs * probs
    row_dot = row_sums(dscores)  # sum_j dp_j p_j, (..., Tq, 1)
    np.subtract(dprobs, row_dot, out=dscores)  # reuse the buffer: dp_k - sum_j dp_j p_j
    dscores *= probs
    dscores *= scale
    return dscores


def causal_softmax_forward(scores, scale):
    """Causal softmax of `scale * scores` over the last axis (either backend)."""
    if array_module(scores) is np:
        return causal_softmax_forward_numpy(scores, scale)
    from minigpt.kernels import softmax_cuda

    return softmax_cuda.causal_softmax_forward_cuda(scores, scale)


def causal_softmax_backward(dprobs, probs, scale):
    """dL/dscores given dL/dprobs and the forward's probs."""
    if array_module(probs) is np:
        return causal_softmax_backward_numpy(dprobs, probs, scale)
    from minigpt.kernels import softmax_cuda

    return softmax_cuda.causal_softmax_backward_cuda(dprobs, probs, scale)
