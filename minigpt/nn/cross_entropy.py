"""Cross-entropy of next-token logits, mean over the positions whose target is not -1.

Forward, for row n with logits z (V entries) and target y:

    loss_n = logsumexp(z) - z_y,      logsumexp(z) = m + log sum_v exp(z_v - m),   m = max z
    loss   = sum_{n valid} loss_n / N_valid

Backward (fused with the softmax, so the probabilities are formed once), with
dout = dL/dloss:

    dloss_n / dz_v = softmax(z)_v - [v == y],      softmax(z)_v = exp(z_v - logsumexp(z))

so dz = (softmax(z) - onehot(y)) * dout / N_valid on valid rows, and 0 on ignored rows.
(minigpt/fast/cross_entropy.py computes the same in the logits' memory, and on the GPU.)
"""

from minigpt.backend import array_module

IGNORE_INDEX = -1


def forward(logits, targets):
    """logits: (..., V), targets: (...) ints with -1 = ignore -> 0-d loss array, and the cache."""
    xp = array_module(logits)
    z, y = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)  # (N, V), (N,)
    valid = y != IGNORE_INDEX
    y_safe = xp.where(valid, y, 0)  # ignored rows read column 0, then get weight 0
    m = z.max(axis=-1)  # (N,)
    lse = m + xp.log(xp.exp(z - m[:, None]).sum(axis=-1))  # logsumexp(z), (N,)
    loss_rows = lse - z[xp.arange(len(y)), y_safe]  # (N,)
    n_valid = valid.sum()
    return (loss_rows * valid).sum() / n_valid, (z, y_safe, valid, lse, n_valid, logits.shape)


def backward(dout, cache):
    """Returns dlogits, shaped like the logits, and {} (no parameters)."""
    z, y_safe, valid, lse, n_valid, shape = cache
    xp = array_module(z)
    onehot = xp.zeros_like(z)
    onehot[xp.arange(len(y_safe)), y_safe] = 1
    coef = (valid * (dout / n_valid)).astype(z.dtype)  # (N,): dout / N_valid on valid rows, 0 on ignored ones
    dz = (xp.exp(z - lse[:, None]) - onehot) * coef[:, None]
    return dz.reshape(shape), {}
