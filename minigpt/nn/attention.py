"""Causal multi-head self-attention with a fused qkv projection (GPT-2's `attn`).

Forward, for x of shape (B, T, C), n_head heads of head_dim D = C / n_head:

    q | k | v = x @ W_attn + b_attn                      # (B, T, 3C), split on the last axis
    q, k, v  -> (B, H, T, D)                             # head h is the h-th chunk of D columns
    a = q @ k^T                                          # (B, H, T, T) raw scores
    p = causal_softmax(a / sqrt(D))                      # row i sees keys j <= i
    p = dropout(p)                                       # attn_pdrop, training only
    y = p @ v                                            # (B, H, T, D)
    y -> (B, T, C);  out = y @ W_proj + b_proj

Backward runs the same graph in reverse. With dy = dL/dy (B, H, T, D):

    dp = dy @ v^T,   dv = p^T @ dy                       # from y = p @ v (as for a linear layer)
    da = softmax_backward(dropout_backward(dp))          # p_k (dp_k - sum_j dp_j p_j) / sqrt(D)
    dq = da @ k,     dk = da^T @ q                       # from a = q @ k^T

and dq | dk | dv are stacked back into the (B, T, 3C) layout of qkv before the
backward of the c_attn linear layer. `forward` and `backward` below are exactly
this, over all T x T scores.

The fast path, `forward_blocked` / `backward_blocked` (what the model runs), skips
causal blocks as FlashAttention does: the queries are taken in blocks of
QUERY_BLOCK rows, and the block of rows s..e-1 only ever looks at keys 0..e-1,
so the scores of later keys, which the mask would zero anyway, are never
computed. With n blocks this does (n + 1) / 2n of the dense work: 3/4 for
T = 256, 5/8 for T = 512. Each block is the plain attention above with
Tq = e - s queries and Tk = e keys; in the backward the blocks' dk and dv add up.
tests/test_nn.py pins the two paths equal.

On the GPU the blocked path runs head-major (`forward_heads_major`): q, k and v
are copied once per layer into one contiguous (3, B, H, T, D) array, so every
block's products are single cuBLAS strided-batched GEMMs over the B*H heads
(backend.batched_matmul: transposes as flags, dk and dv accumulated by the GEMM
itself, TF32 for float32 when on) instead of CuPy's stacked matmul, which copies
strided operands (q blocks, k^T, p^T) before every product and runs plain FP32.
It computes the same sums as the NumPy path; tests/test_batched_matmul.py runs it on NumPy.

Two variants change how q, k and v are made (`project_qkv`); GPT-2's own path
(n_kv_head = n_head, no rotary) never enters it:

* Grouped-query attention (`n_kv_head` = KV < H; KV = 1 is multi-query): c_attn
  makes H query heads but only KV key and value heads, its output columns laid
  out q (H D) | k (KV D) | v (KV D). The H / KV = G consecutive query heads
  h = j G .. j G + G - 1 share key/value head j: k is repeated, k_rep[h] = k[h // G],
  and attention runs as above. Backward: k[j] was used by G heads, so its
  gradient is the sum of theirs (a used-several-times variable gets the sum):

      dk[j] = sum_{g < G} dk_rep[j G + g]            (the same for v)

  The KV cache keeps only the KV heads: G times smaller.
* Rotary position embedding (`rope` = the (cos, sin) tables of minigpt.nn.rotary):
  q and k are rotated by their position's angle after the split (and before k is
  repeated); the backward rotates dq and dk back (the inverse rotation), as
  minigpt/nn/rotary.py derives. The KV cache stores the rotated keys.
"""

import math

import numpy as np

from minigpt.backend import array_module, batched_matmul, matmul_into
from minigpt.nn import dropout, linear, rotary, softmax

QUERY_BLOCK = 128  # rows per block of the fast path: large enough that each matmul stays efficient


def split_heads(qkv, n_head):
    """(B, T, 3C) -> q, k, v, each a (B, H, T, D) view (no copy)."""
    B, T, C3 = qkv.shape
    D = C3 // (3 * n_head)
    qkv = qkv.reshape(B, T, 3, n_head, D).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, D)
    return qkv[0], qkv[1], qkv[2]


def merge_heads(y):
    """(B, H, T, D) -> (B, T, C = H * D): head h's outputs in columns h*D .. (h+1)*D - 1."""
    B, H, T, D = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def heads_view(y, n_head):
    """(B, T, C) -> its (B, H, T, D) view, to write head outputs straight into the merged layout."""
    B, T, C = y.shape
    return y.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def transpose(m):
    """m^T of the last two axes: (..., R, S) -> (..., S, R), a view."""
    return m.swapaxes(-1, -2)


def is_gpt2(n_head, n_kv_head, rope):
    """True for GPT-2's attention: one key/value head per query head, no rotary."""
    return rope is None and n_kv_head in (None, n_head)


# -- the variants: grouped-query keys and values, rotary q and k ---------------------


def split_qkv(qkv, n_head, n_kv_head):
    """(B, T, (H + 2 KV) D) -> q (B, H, T, D), k and v (B, KV, T, D), views (no copy)."""
    if n_kv_head == n_head:
        return split_heads(qkv, n_head)
    B, T, width = qkv.shape
    D = width // (n_head + 2 * n_kv_head)
    q = qkv[..., : n_head * D].reshape(B, T, n_head, D).transpose(0, 2, 1, 3)
    k = qkv[..., n_head * D : (n_head + n_kv_head) * D].reshape(B, T, n_kv_head, D).transpose(0, 2, 1, 3)
    v = qkv[..., (n_head + n_kv_head) * D :].reshape(B, T, n_kv_head, D).transpose(0, 2, 1, 3)
    return q, k, v


def repeat_kv(k, group):
    """(B, KV, T, D) -> (B, KV * group, T, D), head h = k[h // group]; k itself when group is 1."""
    if group == 1:
        return k
    B, KV, T, D = k.shape
    k_rep = array_module(k).empty((B, KV, group, T, D), dtype=k.dtype)
    k_rep[...] = k[:, :, None]  # broadcast over the group's axis
    return k_rep.reshape(B, KV * group, T, D)


def sum_kv(dk_rep, n_kv_head):
    """repeat_kv's backward: (B, H, T, D) -> (B, KV, T, D), the sum over each group of H / KV heads."""
    B, H, T, D = dk_rep.shape
    return dk_rep if H == n_kv_head else dk_rep.reshape(B, n_kv_head, H // n_kv_head, T, D).sum(axis=2)


def project_qkv(x, c_attn_w, c_attn_b, n_head, n_kv_head=None, rope=None):
    """x (B, T, C) -> q, k, v, each (B, H, T, D) (k and v repeated over their groups), and the cache."""
    n_kv_head = n_kv_head or n_head
    qkv, attn_cache = linear.forward(x, c_attn_w, c_attn_b)  # (B, T, (H + 2 KV) D)
    q, k, v = split_qkv(qkv, n_head, n_kv_head)
    if rope is not None:
        q, _ = rotary.forward(q, *rope)
        k, _ = rotary.forward(k, *rope)
    group = n_head // n_kv_head
    return q, repeat_kv(k, group), repeat_kv(v, group), (attn_cache, n_kv_head, rope)


def project_qkv_backward(dq, dk, dv, cache):
    """project_qkv's backward: dq, dk, dv (B, H, T, D) -> dx (B, T, C) and c_attn's gradients."""
    attn_cache, n_kv_head, rope = cache
    xp = array_module(dq)
    dk, dv = sum_kv(dk, n_kv_head), sum_kv(dv, n_kv_head)  # heads sharing a key/value head: their gradients add
    if rope is not None:
        dq, _ = rotary.backward(dq, rope)  # the inverse rotation
        dk, _ = rotary.backward(dk, rope)
    dqkv = xp.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)  # (B, T, (H + 2 KV) D)
    return linear.backward(dqkv, attn_cache)


# -- the textbook attention ----------------------------------------------------------


def forward(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop=0.0, rng=None, training=False,
            n_kv_head=None, rope=None):
    """x: (B, T, C) -> out: (B, T, C), over the full (T, T) score matrix."""
    q, k, v, qkv_cache = project_qkv(x, c_attn_w, c_attn_b, n_head, n_kv_head, rope)  # (B, H, T, D) each
    a = q @ transpose(k)  # (B, H, T, T)
    p, softmax_cache = softmax.forward(a, 1.0 / math.sqrt(q.shape[-1]))
    p, drop_cache = dropout.forward(p, attn_pdrop, rng, training)
    y = merge_heads(p @ v)  # (B, T, C)
    out, proj_cache = linear.forward(y, c_proj_w, c_proj_b)
    return out, (qkv_cache, q, k, v, p, softmax_cache, drop_cache, proj_cache)


def backward(dout, cache):
    """Returns dx (B, T, C) and the gradients of c_attn and c_proj."""
    qkv_cache, q, k, v, p, softmax_cache, drop_cache, proj_cache = cache
    dy, proj_grads = linear.backward(dout, proj_cache)  # (B, T, C)
    dy = heads_view(dy, q.shape[1])  # (B, H, T, D)
    dp = dy @ transpose(v)  # (B, H, T, T)
    dv = transpose(p) @ dy  # (B, H, T, D)
    dp, _ = dropout.backward(dp, drop_cache)
    da, _ = softmax.backward(dp, softmax_cache)  # the 1/sqrt(D) scale included
    dq = da @ k
    dk = transpose(da) @ q
    dx, attn_grads = project_qkv_backward(dq, dk, dv, qkv_cache)  # GPT-2: dq | dk | dv stacked into (B, T, 3C)
    return dx, _prefixed(attn_grads, proj_grads)


def _prefixed(attn_grads, proj_grads):
    grads = {f"c_attn.{name}": g for name, g in attn_grads.items()}
    grads.update({f"c_proj.{name}": g for name, g in proj_grads.items()})
    return grads


# -- the fast path: causal block skipping ----------------------------------------------


def query_blocks(T):
    """(start, end) of each block of query rows."""
    return [(s, min(s + QUERY_BLOCK, T)) for s in range(0, T, QUERY_BLOCK)]


def forward_blocked(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop=0.0, rng=None, training=False,
                    n_kv_head=None, rope=None):
    """`forward`, one block of query rows at a time (keys after the block never scored)."""
    if not is_gpt2(n_head, n_kv_head, rope):
        return _forward_blocked_variant(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop, rng, training,
                                        n_kv_head, rope)
    xp = array_module(x)
    if xp is not np:
        return forward_heads_major(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop, rng, training)
    qkv, attn_cache = linear.forward(x, c_attn_w, c_attn_b)  # (B, T, 3C)
    q, k, v = split_heads(qkv, n_head)  # (B, H, T, D) each
    scale = 1.0 / math.sqrt(q.shape[-1])
    y = xp.empty(x.shape, dtype=x.dtype)  # (B, T, C), C-contiguous: filled block by block through heads_view
    blocks = _attend_blocks(q, k, v, heads_view(y, n_head), scale, attn_pdrop, rng, training)
    out, proj_cache = linear.forward(y, c_proj_w, c_proj_b)
    return out, (attn_cache, qkv, blocks, proj_cache, n_head)


def _attend_blocks(q, k, v, y_heads, scale, attn_pdrop, rng, training):
    """y_heads[:, :, s:e] = dropout(causal_softmax(q k^T scale)) v, block of query rows by block; their caches."""
    blocks = []
    for s, e in query_blocks(q.shape[2]):
        p, softmax_cache = softmax.forward(q[:, :, s:e] @ transpose(k[:, :, :e]), scale)  # (B, H, e-s, e)
        p, drop_cache = dropout.forward(p, attn_pdrop, rng, training)
        matmul_into(p, v[:, :, :e], y_heads[:, :, s:e])
        blocks.append((s, e, p, softmax_cache, drop_cache))
    return blocks


def backward_blocked(dout, cache):
    """`backward` of forward_blocked: dx (B, T, C) and the gradients of c_attn and c_proj."""
    if isinstance(cache, VariantCache):
        return _backward_blocked_variant(dout, cache)
    xp = array_module(dout)
    if xp is not np:
        return backward_heads_major(dout, cache)
    attn_cache, qkv, blocks, proj_cache, n_head = cache
    dy, proj_grads = linear.backward(dout, proj_cache)  # (B, T, C)
    dy = heads_view(dy, n_head)  # (B, H, T, D) view
    q, k, v = split_heads(qkv, n_head)

    dqkv = xp.empty_like(qkv)  # (B, T, 3C): every entry is written below
    dq, dk, dv = split_heads(dqkv, n_head)  # writable views into dqkv
    _attend_blocks_backward(dy, q, k, v, blocks, dq, dk, dv)
    dx, attn_grads = linear.backward(dqkv, attn_cache)
    return dx, _prefixed(attn_grads, proj_grads)


def _attend_blocks_backward(dy, q, k, v, blocks, dq, dk, dv):
    """_attend_blocks' backward: writes dq, dk, dv (B, H, T, D) from dy (B, H, T, D)."""
    # Blocks last to first: the last block sees every key, so it writes dk and dv
    # in place (no zero-filled buffer); each earlier block then adds its share.
    for s, e, p, softmax_cache, drop_cache in reversed(blocks):
        dy_block = dy[:, :, s:e]
        write = e == q.shape[2]
        _matmul_write_or_add(transpose(p), dy_block, dv[:, :, :e], write)  # dv = p^T @ dy
        dp, _ = dropout.backward(dy_block @ transpose(v[:, :, :e]), drop_cache)  # dp = dy @ v^T, (B, H, e-s, e)
        da, _ = softmax.backward(dp, softmax_cache)
        matmul_into(da, k[:, :, :e], dq[:, :, s:e])  # dq = da @ k
        _matmul_write_or_add(transpose(da), q[:, :, s:e], dk[:, :, :e], write)  # dk = da^T @ q


class VariantCache(tuple):
    """forward_blocked's cache when grouped-query or rotary attention made q, k, v (both backends)."""


def _forward_blocked_variant(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop, rng, training,
                             n_kv_head, rope):
    """forward_blocked through project_qkv, the same xp code on NumPy and CuPy."""
    xp = array_module(x)
    q, k, v, qkv_cache = project_qkv(x, c_attn_w, c_attn_b, n_head, n_kv_head, rope)  # (B, H, T, D) each
    y = xp.empty(x.shape, dtype=x.dtype)  # (B, T, C)
    blocks = _attend_blocks(q, k, v, heads_view(y, n_head), 1.0 / math.sqrt(q.shape[-1]), attn_pdrop, rng, training)
    out, proj_cache = linear.forward(y, c_proj_w, c_proj_b)
    return out, VariantCache((qkv_cache, q, k, v, blocks, proj_cache))


def _backward_blocked_variant(dout, cache):
    qkv_cache, q, k, v, blocks, proj_cache = cache
    xp = array_module(dout)
    dy, proj_grads = linear.backward(dout, proj_cache)  # (B, T, C)
    dq, dk, dv = xp.empty_like(q), xp.empty_like(k), xp.empty_like(v)  # (B, H, T, D): every entry is written
    _attend_blocks_backward(heads_view(dy, q.shape[1]), q, k, v, blocks, dq, dk, dv)
    dx, attn_grads = project_qkv_backward(dq, dk, dv, qkv_cache)
    return dx, _prefixed(attn_grads, proj_grads)


def _matmul_write_or_add(a, b, out, write):
    """out = a @ b (written in place) when `write`, else out += a @ b."""
    if write:
        matmul_into(a, b, out)
    else:
        out += a @ b


# -- the GPU layout: head-major q, k, v and one GEMM per product ------------------------


def forward_heads_major(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop=0.0, rng=None, training=False):
    """`forward_blocked` over a contiguous (3, B, H, T, D) copy of q, k, v (the GPU's path)."""
    xp = array_module(x)
    qkv, attn_cache = linear.forward(x, c_attn_w, c_attn_b)  # (B, T, 3C)
    B, T, C = x.shape
    D = C // n_head
    qkv_heads = xp.ascontiguousarray(qkv.reshape(B, T, 3, n_head, D).transpose(2, 0, 3, 1, 4))  # (3, B, H, T, D)
    q, k, v = qkv_heads
    scale = 1.0 / math.sqrt(D)
    y_heads = xp.empty((B, n_head, T, D), dtype=x.dtype)
    blocks = []
    for s, e in query_blocks(T):
        a = batched_matmul(q[:, :, s:e], k[:, :, :e], transpose_b=True)  # q k^T, (B, H, e-s, e)
        p, softmax_cache = softmax.forward(a, scale)
        p, drop_cache = dropout.forward(p, attn_pdrop, rng, training)
        batched_matmul(p, v[:, :, :e], out=y_heads[:, :, s:e])  # p v, (B, H, e-s, D)
        blocks.append((s, e, p, softmax_cache, drop_cache))
    out, proj_cache = linear.forward(merge_heads(y_heads), c_proj_w, c_proj_b)
    return out, (attn_cache, qkv_heads, blocks, proj_cache)


def backward_heads_major(dout, cache):
    """`backward_blocked` of forward_heads_major."""
    attn_cache, qkv_heads, blocks, proj_cache = cache
    xp = array_module(dout)
    _, B, n_head, T, D = qkv_heads.shape
    q, k, v = qkv_heads
    dy, proj_grads = linear.backward(dout, proj_cache)  # (B, T, C)
    dy = xp.ascontiguousarray(heads_view(dy, n_head))  # (B, H, T, D)
    dqkv_heads = xp.empty_like(qkv_heads)  # (3, B, H, T, D): every entry is written below
    dq, dk, dv = dqkv_heads
    # Blocks last to first, as in backward_blocked: the last block writes dk and dv, the others add.
    for s, e, p, softmax_cache, drop_cache in reversed(blocks):
        accumulate = e != T
        dy_block = dy[:, :, s:e]
        batched_matmul(p, dy_block, transpose_a=True, out=dv[:, :, :e], accumulate=accumulate)  # dv (+)= p^T dy
        dp, _ = dropout.backward(batched_matmul(dy_block, v[:, :, :e], transpose_b=True), drop_cache)  # dy v^T
        da, _ = softmax.backward(dp, softmax_cache)
        batched_matmul(da, k[:, :, :e], out=dq[:, :, s:e])  # dq = da k
        batched_matmul(da, q[:, :, s:e], transpose_a=True, out=dk[:, :, :e], accumulate=accumulate)  # dk (+)= da^T q
    dqkv = dqkv_heads.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * n_head * D)  # (B, T, 3C), one copy
    dx, attn_grads = linear.backward(dqkv, attn_cache)
    return dx, _prefixed(attn_grads, proj_grads)


# -- inference -------------------------------------------------------------------------


def padding_mask(xp, pad, length, t_new, dtype):
    """Additive (B, 1, T_new, length + T_new) mask hiding each row's left padding from forward_cached's queries.

    Row b's first pad[b] cache slots hold padding: key j < pad[b] gets -inf,
    except from the query at slot j itself, so that a padding query still sees
    one key (finite values, never NaN) while a real query never sees padding.
    """
    keys = xp.arange(length + t_new)  # (Tk,)
    queries = xp.arange(length, length + t_new)[:, None]  # (T_new, 1)
    hidden = (keys < xp.asarray(pad)[:, None, None, None]) & (keys != queries)  # (B, 1, T_new, Tk)
    return xp.where(hidden, -xp.inf, 0.0).astype(dtype)


def forward_cached(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, keys, values, length, n_kv_head=None, rope=None,
                   mask=None):
    """Inference with a KV cache: x (B, T_new, C) at positions length .. length + T_new - 1.

    keys, values: this layer's preallocated (B, KV, block_size, D) buffers; the new
    keys and values are written at [length : length + T_new] and the queries attend
    to everything up to there (the mask lets new query i see keys j <= length + i).
    rope: the rotary tables of positions length .. length + T_new - 1.
    mask: None, or `padding_mask`'s additive mask for left-padded rows.
    """
    xp = array_module(x)
    n_kv_head = n_kv_head or n_head
    qkv, _ = linear.forward(x, c_attn_w, c_attn_b)
    q, k, v = split_qkv(qkv, n_head, n_kv_head)
    if rope is not None:
        q, _ = rotary.forward(q, *rope)
        k, _ = rotary.forward(k, *rope)
    end = length + q.shape[2]
    keys[:, :, length:end] = k
    values[:, :, length:end] = v
    group = n_head // n_kv_head
    k_all, v_all = repeat_kv(keys[:, :, :end], group), repeat_kv(values[:, :, :end], group)  # (B, H, end, D)
    scores = q @ transpose(k_all)  # (B, H, T_new, end)
    if mask is not None:
        scores += mask
    probs, _ = softmax.forward(scores, 1.0 / math.sqrt(q.shape[-1]))
    y = xp.empty(x.shape, dtype=x.dtype)  # (B, T_new, C), C-contiguous, as in forward_blocked
    matmul_into(probs, v_all, heads_view(y, n_head))
    out, _ = linear.forward(y, c_proj_w, c_proj_b)
    return out
