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
"""

import math

import numpy as np

from minigpt.backend import array_module, batched_matmul, matmul_into
from minigpt.nn import dropout, linear, softmax

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


# -- the textbook attention ----------------------------------------------------------


def forward(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop=0.0, rng=None, training=False):
    """x: (B, T, C) -> out: (B, T, C), over the full (T, T) score matrix."""
    qkv, attn_cache = linear.forward(x, c_attn_w, c_attn_b)  # (B, T, 3C)
    q, k, v = split_heads(qkv, n_head)  # (B, H, T, D) each
    a = q @ transpose(k)  # (B, H, T, T)
    p, softmax_cache = softmax.forward(a, 1.0 / math.sqrt(q.shape[-1]))
    p, drop_cache = dropout.forward(p, attn_pdrop, rng, training)
    y = merge_heads(p @ v)  # (B, T, C)
    out, proj_cache = linear.forward(y, c_proj_w, c_proj_b)
    return out, (attn_cache, q, k, v, p, softmax_cache, drop_cache, proj_cache)


def backward(dout, cache):
    """Returns dx (B, T, C) and the gradients of c_attn and c_proj."""
    attn_cache, q, k, v, p, softmax_cache, drop_cache, proj_cache = cache
    xp = array_module(dout)
    dy, proj_grads = linear.backward(dout, proj_cache)  # (B, T, C)
    dy = heads_view(dy, q.shape[1])  # (B, H, T, D)
    dp = dy @ transpose(v)  # (B, H, T, T)
    dv = transpose(p) @ dy  # (B, H, T, D)
    dp, _ = dropout.backward(dp, drop_cache)
    da, _ = softmax.backward(dp, softmax_cache)  # the 1/sqrt(D) scale included
    dq = da @ k
    dk = transpose(da) @ q
    dqkv = xp.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)  # (B, T, 3C)
    dx, attn_grads = linear.backward(dqkv, attn_cache)
    return dx, _prefixed(attn_grads, proj_grads)


def _prefixed(attn_grads, proj_grads):
    grads = {f"c_attn.{name}": g for name, g in attn_grads.items()}
    grads.update({f"c_proj.{name}": g for name, g in proj_grads.items()})
    return grads


# -- the fast path: causal block skipping ----------------------------------------------


def query_blocks(T):
    """(start, end) of each block of query rows."""
    return [(s, min(s + QUERY_BLOCK, T)) for s in range(0, T, QUERY_BLOCK)]


def forward_blocked(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop=0.0, rng=None, training=False):
    """`forward`, one block of query rows at a time (keys after the block never scored)."""
    xp = array_module(x)
    if xp is not np:
        return forward_heads_major(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop, rng, training)
    qkv, attn_cache = linear.forward(x, c_attn_w, c_attn_b)  # (B, T, 3C)
    q, k, v = split_heads(qkv, n_head)  # (B, H, T, D) each
    scale = 1.0 / math.sqrt(q.shape[-1])
    y = xp.empty(x.shape, dtype=x.dtype)  # (B, T, C), C-contiguous: filled block by block through heads_view
    y_heads = heads_view(y, n_head)
    blocks = []
    for s, e in query_blocks(q.shape[2]):
        p, softmax_cache = softmax.forward(q[:, :, s:e] @ transpose(k[:, :, :e]), scale)  # (B, H, e-s, e)
        p, drop_cache = dropout.forward(p, attn_pdrop, rng, training)
        matmul_into(p, v[:, :, :e], y_heads[:, :, s:e])
        blocks.append((s, e, p, softmax_cache, drop_cache))
    out, proj_cache = linear.forward(y, c_proj_w, c_proj_b)
    return out, (attn_cache, qkv, blocks, proj_cache, n_head)


def backward_blocked(dout, cache):
    """`backward` of forward_blocked: dx (B, T, C) and the gradients of c_attn and c_proj."""
    xp = array_module(dout)
    if xp is not np:
        return backward_heads_major(dout, cache)
    attn_cache, qkv, blocks, proj_cache, n_head = cache
    dy, proj_grads = linear.backward(dout, proj_cache)  # (B, T, C)
    dy = heads_view(dy, n_head)  # (B, H, T, D) view
    q, k, v = split_heads(qkv, n_head)

    dqkv = xp.empty_like(qkv)  # (B, T, 3C): every entry is written below
    dq, dk, dv = split_heads(dqkv, n_head)  # writable views into dqkv
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

    dx, attn_grads = linear.backward(dqkv, attn_cache)
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


def forward_cached(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, keys, values, length):
    """Inference with a KV cache: x (B, T_new, C) at positions length .. length + T_new - 1.

    keys, values: this layer's preallocated (B, H, block_size, D) buffers; the new
    keys and values are written at [length : length + T_new] and the queries attend
    to everything up to there (the mask lets new query i see keys j <= length + i).
    """
    xp = array_module(x)
    qkv, _ = linear.forward(x, c_attn_w, c_attn_b)
    q, k, v = split_heads(qkv, n_head)
    end = length + q.shape[2]
    keys[:, :, length:end] = k
    values[:, :, length:end] = v
    k_all, v_all = keys[:, :, :end], values[:, :, :end]  # (B, H, end, D)
    probs, _ = softmax.forward(q @ transpose(k_all), 1.0 / math.sqrt(q.shape[-1]))
    y = xp.empty(x.shape, dtype=x.dtype)  # (B, T_new, C), C-contiguous, as in forward_blocked
    matmul_into(probs, v_all, heads_view(y, n_head))
    out, _ = linear.forward(y, c_proj_w, c_proj_b)
    return out
