"""Cross-entropy of next-token logits, mean over the positions whose target is not -1.

Forward, for row n with logits z (V entries) and target y:

    loss_n = logsumexp(z) - z_y,      logsumexp(z) = m + log S,   S = sum_v exp(z_v - m),  m = max z
    loss   = sum_{n valid} loss_n / N_valid

Backward (fused with the softmax, so the probabilities are formed once):

    dloss_n / dz_v = softmax(z)_v - [v == y]

so dz = (softmax(z) - onehot(y)) * dloss / N_valid on valid rows, and 0 on ignored rows.
The forward already computes e = exp(z - m) to get S; it is kept, and the
backward forms softmax(z) = e / S from it instead of exponentiating again.

NumPy arrays are computed here; CuPy arrays go to the fused kernels in
minigpt/kernels/cross_entropy_cuda.py (one block per row: max, logsumexp and
loss in one pass; the backward's softmax - onehot, scaled, in one more), which
keep logsumexp(z) per row instead of e.
"""

import numpy as np

from minigpt.backend import array_module, sum_last_axis
from minigpt.kernels import cross_entropy_cuda

IGNORE_INDEX = -1


def forward(logits, targets):
    """logits: (..., V), targets: (...) ints with -1 = ignore -> 0-d loss array, and the cache."""
    if array_module(logits) is np:
        return forward_numpy(logits, targets)
    V = logits.shape[-1]
    z, y = logits.reshape(-1, V), targets.reshape(-1)  # (N, V), (N,)
    loss_rows, lse = cross_entropy_cuda.cross_entropy_forward_cuda(z, y)  # loss_rows: 0 on ignored rows
    n_valid = (y != IGNORE_INDEX).sum()
    return loss_rows.sum() / n_valid, (z, y, lse, n_valid, logits.shape)


def backward(dloss, cache):
    """Returns dlogits, shaped like the logits, and {} (no parameters); the cache is left as it was."""
    if array_module(cache[0]) is np:
        return backward_numpy(dloss, cache)
    z, y, lse, n_valid, shape = cache
    coef = (dloss / n_valid).astype(z.dtype).reshape(1)  # on the device: dloss / N_valid
    return cross_entropy_cuda.cross_entropy_backward_cuda(z, y, lse, coef).reshape(shape), {}


def forward_numpy(logits, targets):
    xp = array_module(logits)
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V)
    y = targets.reshape(-1)  # (N,)
    valid = y != IGNORE_INDEX
    n_valid = valid.sum()
    m = z.max(axis=1, keepdims=True)  # (N, 1)
    e = z - m  # (N, V), a new array
    xp.exp(e, out=e)
    s = sum_last_axis(e)  # S = sum_v exp(z_v - m), (N, 1)
    rows = xp.arange(z.shape[0])
    y_safe = xp.where(valid, y, 0)  # ignored rows read column 0, then get weight 0
    loss_rows = xp.log(s[:, 0]) + m[:, 0] - z[rows, y_safe]  # logsumexp(z) - z_y, (N,)
    loss = (loss_rows * valid).sum() / n_valid
    return loss, (e, s, y_safe, valid, n_valid, logits.shape)


def backward_numpy(dloss, cache):
    e, s, y_safe, valid, n_valid, shape = cache
    xp = array_module(e)
    dz = e * (1.0 / s)  # softmax(z), (N, V), a new array
    dz[xp.arange(dz.shape[0]), y_safe] -= 1.0  # - onehot(y)
    dz *= (valid * (dloss / n_valid)).astype(dz.dtype)[:, None]  # dloss / N_valid, 0 on ignored rows
    return dz.reshape(shape), {}
