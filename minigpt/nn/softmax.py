"""Scaled, causal-masked softmax over attention scores (the `probs = causal_softmax(scores / sqrt(D))` of attention).

Scores arrive as the raw products q @ k^T of shape (..., Tq, Tk). Query i sits
at absolute position i + (Tk - Tq) (with a KV cache, the keys include Tk - Tq
earlier positions), so it may attend to keys j <= i + Tk - Tq. Then, per row,

    z_j = s * scores_j   (s = 1/sqrt(head_dim)),   m = max_j z_j
    p_j = exp(z_j - m) / sum_j' exp(z_j' - m)            (subtracting m changes nothing but overflow)

and masked entries are exactly 0 (their z is -inf, and exp(-inf) is 0).

Backward, one row at a time, with dout = dL/dp. Each p_j depends on every z_k of its row:

    dp_j / dz_k = p_j (delta_jk - p_k)

so dz_k = sum_j dout_j p_j (delta_jk - p_k) = p_k (dout_k - sum_j dout_j p_j), and
dscores_k = s * dz_k. Masked entries have p_k = 0, so they get no gradient without a second mask.
"""

from minigpt.backend import array_module


def causal_mask(xp, t_q: int, t_k: int):
    """(Tq, Tk) boolean, True where query i may NOT see key j (j > i + Tk - Tq)."""
    return xp.triu(xp.ones((t_q, t_k), dtype=bool), k=t_k - t_q + 1)


def forward(scores, scale):
    """scores: (..., Tq, Tk), Tq <= Tk -> probs (same shape), and the cache (probs, scale)."""
    xp = array_module(scores)
    z = xp.where(causal_mask(xp, *scores.shape[-2:]), -xp.inf, scores * scale)
    e = xp.exp(z - z.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    return probs, (probs, scale)


def backward(dout, cache):
    """Returns dscores = s * p * (dout - sum_j dout_j p_j) and {} (no parameters)."""
    probs, scale = cache
    return scale * probs * (dout - (dout * probs).sum(axis=-1, keepdims=True)), {}
