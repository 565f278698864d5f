"""Token + position embedding: x[b, t] = wte[idx[b, t]] + wpe[offset + t].

Backward: each output row is a sum of one wte row and one wpe row, so its
gradient flows back unchanged into both. A token id that appears several times
receives the sum of their gradients (a scatter-add, np.add.at / cupyx.scatter_add);
position t receives the sum over the batch:

    dwte[v] = sum_{b,t: idx[b,t] = v} dx[b, t]        dwpe[offset + t] = sum_b dx[b, t]
"""

from minigpt.backend import array_module, column_sums, scatter_add


def forward(idx, wte, wpe, offset=0):
    """idx: (B, T) ints, wte: (V, C), wpe: (n_positions, C) -> x: (B, T, C)."""
    T = idx.shape[1]
    x = wte[idx]  # (B, T, C), a gather: a new array
    x += wpe[offset : offset + T]
    return x, (idx, wte.shape, wpe.shape, offset)


def backward(dx, cache, dwte=None):
    """Returns None (ids have no gradient) and {"wte": dwte, "wpe": dwpe}.

    With `dwte` given (the tied LM head's gradient of the same matrix), the rows
    are added into it in place rather than into a fresh (V, C) array of zeros.
    """
    idx, wte_shape, wpe_shape, offset = cache
    xp = array_module(dx)
    C = dx.shape[-1]
    if dwte is None:
        dwte = xp.zeros(wte_shape, dtype=dx.dtype)
    scatter_add(xp, dwte, idx.reshape(-1), dx.reshape(-1, C))
    dwpe = xp.zeros(wpe_shape, dtype=dx.dtype)
    B, T = idx.shape
    dwpe[offset : offset + T] = column_sums(dx.reshape(B, T * C)).reshape(T, C)  # sum over the batch
    return None, {"wte": dwte, "wpe": dwpe}
