"""Cross-entropy of next-token logits, fast: must equal minigpt.nn.cross_entropy.forward / .backward.

The forward already computes e = exp(z - m) to get S = sum_v e_v; the NumPy twin
keeps e, and the backward forms softmax(z) = e / S from it instead of
exponentiating again.

The in-place variants are for a caller that needs neither the logits after the
forward nor the cache after the backward (the model in training): with N x V
logits (206 MB for GPT-2 at T = 1024 in float32) each saves one such array.
`forward_in_place` writes e over the logits, and `backward_in_place` writes the
gradient over e: the whole loss then holds one (N, V) array, not three. `IN_PLACE`
is the pair under the names forward / backward, for the table of minigpt.fast.

CuPy arrays go to the fused kernels of minigpt/kernels/cross_entropy_cuda.py (one
block per row: max, logsumexp and loss in one pass; the backward's softmax -
onehot, scaled, in one more), which keep logsumexp(z) per row instead of e.
"""

from types import SimpleNamespace

import numpy as np

from minigpt.backend import array_module, sum_last_axis
from minigpt.kernels import cross_entropy_cuda
from minigpt.nn.cross_entropy import IGNORE_INDEX


def forward(logits, targets):
    """minigpt.nn.cross_entropy.forward: the mean loss over valid positions (0-d array), and the cache."""
    if array_module(logits) is np:
        return forward_numpy(logits, targets)
    V = logits.shape[-1]
    z, y = logits.reshape(-1, V), targets.reshape(-1)  # (N, V), (N,)
    loss_rows, lse = cross_entropy_cuda.cross_entropy_forward_cuda(z, y)  # loss_rows: 0 on ignored rows
    n_valid = (y != IGNORE_INDEX).sum()
    return loss_rows.sum() / n_valid, (z, y, lse, n_valid, logits.shape)


def backward(dout, cache):
    """minigpt.nn.cross_entropy.backward: dlogits and {}; the cache is left as it was."""
    if array_module(cache[0]) is np:
        return backward_numpy(dout, cache)
    z, y, lse, n_valid, shape = cache
    coef = (dout / n_valid).astype(z.dtype).reshape(1)  # on the device: dout / N_valid
    return cross_entropy_cuda.cross_entropy_backward_cuda(z, y, lse, coef).reshape(shape), {}


def forward_in_place(logits, targets):
    """`forward`, overwriting the logits (C-contiguous) with e = exp(z - m); on CuPy, `forward` (no e to keep)."""
    if array_module(logits) is np:
        return forward_numpy(logits, targets, in_place=True)
    return forward(logits, targets)


def backward_in_place(dout, cache):
    """`backward`, writing dlogits over the cache's e, which is then gone; on CuPy, `backward`."""
    if array_module(cache[0]) is np:
        return backward_numpy(dout, cache, in_place=True)
    return backward(dout, cache)


IN_PLACE = SimpleNamespace(forward=forward_in_place, backward=backward_in_place)


def forward_numpy(logits, targets, in_place=False):
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V); a view when the logits are contiguous
    if in_place and not np.shares_memory(z, logits):
        raise ValueError("forward_in_place needs C-contiguous logits (reshape made a copy)")
    y = targets.reshape(-1)  # (N,)
    valid = y != IGNORE_INDEX
    n_valid = valid.sum()
    y_safe = np.where(valid, y, 0)  # ignored rows read column 0, then get weight 0
    z_y = z[np.arange(z.shape[0]), y_safe]  # (N,), read before an in-place pass overwrites z
    m = z.max(axis=1, keepdims=True)  # (N, 1)
    e = np.subtract(z, m, out=z if in_place else None)  # (N, V)
    np.exp(e, out=e)
    s = sum_last_axis(e)  # S = sum_v exp(z_v - m), (N, 1)
    loss_rows = np.log(s[:, 0]) + m[:, 0] - z_y  # logsumexp(z) - z_y, (N,)
    loss = (loss_rows * valid).sum() / n_valid
    return loss, (e, s, y_safe, valid, n_valid, logits.shape)


def backward_numpy(dout, cache, in_place=False):
    e, s, y_safe, valid, n_valid, shape = cache
    coef = valid * (dout / n_valid)  # (N,): dout / N_valid on valid rows, 0 on ignored ones
    # dz = (softmax(z) - onehot(y)) coef = e (coef / S) - onehot(y) coef: one pass over (N, V), then N entries
    dz = np.multiply(e, (coef / s[:, 0]).astype(e.dtype)[:, None], out=e if in_place else None)
    dz[np.arange(dz.shape[0]), y_safe] -= coef.astype(dz.dtype)
    return dz.reshape(shape), {}
