"""Token + position embedding: x[b, t] = wte[idx[b, t]] + wpe[offset + t].

Backward, with dout = dL/dx: each output row is a sum of one wte row and one
wpe row, so its gradient flows back unchanged into both. A token id that appears several times
receives the sum of their gradients (a scatter-add, np.add.at / cupyx.scatter_add);
position t receives the sum over the batch:

    dwte[v] = sum_{b,t: idx[b,t] = v} dout[b, t]      dwpe[offset + t] = sum_b dout[b, t]

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


def backward(dout, cache):
    """Returns None (ids have no gradient) and {"wte": dwte, "wpe": dwpe} ({"wte": dwte} without wpe)."""
    idx, wte_shape, wpe_shape, offset = cache
    xp = array_module(dout)
    C = dout.shape[-1]
    dwte = xp.zeros(wte_shape, dtype=dout.dtype)
    scatter_add(xp, dwte, idx.reshape(-1), dout.reshape(-1, C))  # dwte[idx[b, t]] += dout[b, t]
    if wpe_shape is None:
        return None, {"wte": dwte}
    dwpe = xp.zeros(wpe_shape, dtype=dout.dtype)
    B, T = idx.shape
    dwpe[offset : offset + T] = sum_first_axis(dout.reshape(B, T * C)).reshape(T, C)  # sum_b dout[b, t]
    return None, {"wte": dwte, "wpe": dwpe}
