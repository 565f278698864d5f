"""Token + position embedding: x[b, t] = wte[idx[b, t]] + wpe[offset + t].

Backward: each output row is a sum of one wte row and one wpe row, so its
gradient flows back unchanged into both. A token id that appears several times
receives the sum of their gradients (a scatter-add, np.add.at / cupyx.scatter_add);
position t receives the sum over the batch:

    dwte[v] = sum_{b,t: idx[b,t] = v} dx[b, t]        dwpe[offset + t] = sum_b dx[b, t]

In GPT-2 wte is also the LM head's weight; the model adds the head's gradient to
this one (minigpt.model.GPT.backward). With rotary positions (`position =
"rotary"`) there is no wpe: wpe is None and only dwte comes back.
"""

from minigpt.backend import array_module, scatter_add, sum_first_axis


def forward(idx, wte, wpe, offset=0):
    """idx: (B, T) ints, wte: (V, C), wpe: (n_positions, C) or None -> x: (B, T, C)."""
    T = idx.shape[1]
    x = wte[idx]  # (B, T, C), a gather: a new array
    if wpe is None:
        return x, (idx, wte.shape, None, offset)
    x += wpe[offset : offset + T]
    return x, (idx, wte.shape, wpe.shape, offset)


def backward(dx, cache):
    """Returns None (ids have no gradient) and {"wte": dwte, "wpe": dwpe} ({"wte": dwte} without wpe)."""
    idx, wte_shape, wpe_shape, offset = cache
    xp = array_module(dx)
    C = dx.shape[-1]
    dwte = xp.zeros(wte_shape, dtype=dx.dtype)
    scatter_add(xp, dwte, idx.reshape(-1), dx.reshape(-1, C))  # dwte[idx[b, t]] += dx[b, t]
    if wpe_shape is None:
        return None, {"wte": dwte}
    dwpe = xp.zeros(wpe_shape, dtype=dx.dtype)
    B, T = idx.shape
    dwpe[offset : offset + T] = sum_first_axis(dx.reshape(B, T * C)).reshape(T, C)  # sum_b dx[b, t]
    return None, {"wte": dwte, "wpe": dwpe}
