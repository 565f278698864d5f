"""Cross-entropy of next-token logits, mean over the positions whose target is not -1.

Forward, for row n with logits z (V entries) and target y:

    loss_n = logsumexp(z) - z_y,      logsumexp(z) = m + log sum_v exp(z_v - m),  m = max z
    loss   = sum_{n valid} loss_n / N_valid

Backward (fused with the softmax, so the probabilities are formed once):

    dloss_n / dz_v = softmax(z)_v - [v == y]

so dz = (softmax(z) - onehot(y)) * dloss / N_valid on valid rows, and 0 on ignored rows.
"""

from minigpt.backend import array_module

IGNORE_INDEX = -1


def forward(logits, targets):
    """logits: (..., V), targets: (...) ints with -1 = ignore -> 0-d loss array."""
    xp = array_module(logits)
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V)
    y = targets.reshape(-1)  # (N,)
    valid = y != IGNORE_INDEX
    n_valid = valid.sum()
    m = z.max(axis=1, keepdims=True)  # (N, 1)
    lse = xp.log(xp.exp(z - m).sum(axis=1, keepdims=True)) + m  # (N, 1)
    y_safe = xp.where(valid, y, 0)  # ignored rows read column 0, then get weight 0
    z_y = z[xp.arange(z.shape[0]), y_safe]  # (N,)
    loss = ((lse[:, 0] - z_y) * valid).sum() / n_valid
    return loss, (z, lse, y_safe, valid, n_valid, logits.shape)


def backward(dloss, cache):
    """Returns dlogits with the shape of the logits."""
    z, lse, y_safe, valid, n_valid, shape = cache
    xp = array_module(z)
    dz = z - lse
    xp.exp(dz, out=dz)  # softmax(z), (N, V)
    dz[xp.arange(z.shape[0]), y_safe] -= 1.0
    dz *= (valid * (dloss / n_valid)).astype(dz.dtype)[:, None]
    return dz.reshape(shape)
