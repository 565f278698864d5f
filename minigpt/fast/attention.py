"""Attention, fast: `forward` / `backward` must equal minigpt.nn.attention.forward / .backward.

Causal blocks are skipped as FlashAttention does: the queries are taken in
blocks of QUERY_BLOCK rows, and the block of rows s..e-1 only ever looks at keys
0..e-1, so the scores of later keys, which the mask would zero anyway, are never
computed. With n blocks this does (n + 1) / 2n of the dense work: 3/4 for
T = 256, 5/8 for T = 512. Each block is the plain attention with Tq = e - s
queries and Tk = e keys; in the backward the blocks' dk and dv add up, and the
head outputs and dq, dk, dv are written straight into their merged buffers.

On the GPU (GPT-2's attention) the blocks run head-major (`forward_heads_major`):
q, k and v are copied once per layer into one contiguous (3, B, H, T, D) array,
so every block's products are single cuBLAS strided-batched GEMMs over the B*H
heads (backend.batched_matmul: transposes as flags, dk and dv accumulated by the
GEMM itself, TF32 for float32 when on) instead of CuPy's stacked matmul, which
copies strided operands (q blocks, k^T, probs^T) before every product and runs
plain FP32. tests/test_batched_matmul.py runs it on NumPy.

The grouped-query and rotary variants (`is_gpt2` false) make q, k, v through
minigpt.nn.attention.project_qkv, then run the same blocks on either device.
`forward_cached` is the KV-cache step of inference.
"""

import math

import numpy as np

from minigpt.backend import array_module, batched_matmul, matmul_into
from minigpt.fast import softmax
from minigpt.nn import dropout, linear, rotary
from minigpt.nn.attention import (heads_view, merge_heads, prefixed, project_qkv, project_qkv_backward, repeat_kv,
                                  split_heads, split_qkv, transpose)

QUERY_BLOCK = 128  # rows per block: large enough that each matmul stays efficient


def is_gpt2(n_head, n_kv_head, rope):
    """True for GPT-2's attention: one key/value head per query head, no rotary."""
    return rope is None and n_kv_head in (None, n_head)


def query_blocks(T):
    """(start, end) of each block of query rows."""
    return [(s, min(s + QUERY_BLOCK, T)) for s in range(0, T, QUERY_BLOCK)]


def forward(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop=0.0, rng=None, training=False,
            n_kv_head=None, rope=None):
    """minigpt.nn.attention.forward, one block of query rows at a time (keys after the block never scored)."""
    if not is_gpt2(n_head, n_kv_head, rope):
        return _forward_variant(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop, rng, training,
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
        probs, softmax_cache = softmax.forward(q[:, :, s:e] @ transpose(k[:, :, :e]), scale)  # (B, H, e-s, e)
        probs, drop_cache = dropout.forward(probs, attn_pdrop, rng, training)
        matmul_into(probs, v[:, :, :e], y_heads[:, :, s:e])
        blocks.append((s, e, probs, softmax_cache, drop_cache))
    return blocks


def backward(dout, cache):
    """minigpt.nn.attention.backward: dx (B, T, C) and the gradients of c_attn and c_proj."""
    if isinstance(cache, VariantCache):
        return _backward_variant(dout, cache)
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
    return dx, prefixed(attn_grads, proj_grads)


def _attend_blocks_backward(dy, q, k, v, blocks, dq, dk, dv):
    """_attend_blocks' backward: writes dq, dk, dv (B, H, T, D) from dy (B, H, T, D)."""
    # Blocks last to first: the last block sees every key, so it writes dk and dv
    # in place (no zero-filled buffer); each earlier block then adds its share.
    for s, e, probs, softmax_cache, drop_cache in reversed(blocks):
        dy_block = dy[:, :, s:e]
        write = e == q.shape[2]
        _matmul_write_or_add(transpose(probs), dy_block, dv[:, :, :e], write)  # dv = probs^T @ dy
        dprobs, _ = dropout.backward(dy_block @ transpose(v[:, :, :e]), drop_cache)  # dy @ v^T, (B, H, e-s, e)
        dscores, _ = softmax.backward(dprobs, softmax_cache)
        matmul_into(dscores, k[:, :, :e], dq[:, :, s:e])  # dq = dscores @ k
        _matmul_write_or_add(transpose(dscores), q[:, :, s:e], dk[:, :, :e], write)  # dk = dscores^T @ q


class VariantCache(tuple):
    """forward's cache when grouped-query or rotary attention made q, k, v (both backends)."""


def _forward_variant(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop, rng, training,
                             n_kv_head, rope):
    """forward through project_qkv, the same xp code on NumPy and CuPy."""
    xp = array_module(x)
    q, k, v, qkv_cache = project_qkv(x, c_attn_w, c_attn_b, n_head, n_kv_head, rope)  # (B, H, T, D) each
    y = xp.empty(x.shape, dtype=x.dtype)  # (B, T, C)
    blocks = _attend_blocks(q, k, v, heads_view(y, n_head), 1.0 / math.sqrt(q.shape[-1]), attn_pdrop, rng, training)
    out, proj_cache = linear.forward(y, c_proj_w, c_proj_b)
    return out, VariantCache((qkv_cache, q, k, v, blocks, proj_cache))


def _backward_variant(dout, cache):
    qkv_cache, q, k, v, blocks, proj_cache = cache
    xp = array_module(dout)
    dy, proj_grads = linear.backward(dout, proj_cache)  # (B, T, C)
    dq, dk, dv = xp.empty_like(q), xp.empty_like(k), xp.empty_like(v)  # (B, H, T, D): every entry is written
    _attend_blocks_backward(heads_view(dy, q.shape[1]), q, k, v, blocks, dq, dk, dv)
    dx, attn_grads = project_qkv_backward(dq, dk, dv, qkv_cache)
    return dx, prefixed(attn_grads, proj_grads)


def _matmul_write_or_add(a, b, out, write):
    """out = a @ b (written in place) when `write`, else out += a @ b."""
    if write:
        matmul_into(a, b, out)
    else:
        out += a @ b


# -- the GPU layout: head-major q, k, v and one GEMM per product ------------------------


def forward_heads_major(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop=0.0, rng=None, training=False):
    """minigpt.nn.attention.forward (GPT-2's), blocked over a contiguous (3, B, H, T, D) copy of q, k, v (the GPU's)."""
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
        scores = batched_matmul(q[:, :, s:e], k[:, :, :e], transpose_b=True)  # q k^T, (B, H, e-s, e)
        probs, softmax_cache = softmax.forward(scores, scale)
        probs, drop_cache = dropout.forward(probs, attn_pdrop, rng, training)
        batched_matmul(probs, v[:, :, :e], out=y_heads[:, :, s:e])  # probs v, (B, H, e-s, D)
        blocks.append((s, e, probs, softmax_cache, drop_cache))
    out, proj_cache = linear.forward(merge_heads(y_heads), c_proj_w, c_proj_b)
    return out, (attn_cache, qkv_heads, blocks, proj_cache)


def backward_heads_major(dout, cache):
    """minigpt.nn.attention.backward, for forward_heads_major's cache."""
    attn_cache, qkv_heads, blocks, proj_cache = cache
    xp = array_module(dout)
    _, B, n_head, T, D = qkv_heads.shape
    q, k, v = qkv_heads
    dy, proj_grads = linear.backward(dout, proj_cache)  # (B, T, C)
    dy = xp.ascontiguousarray(heads_view(dy, n_head))  # (B, H, T, D)
    dqkv_heads = xp.empty_like(qkv_heads)  # (3, B, H, T, D): every entry is written below
    dq, dk, dv = dqkv_heads
    # Blocks last to first, as in backward: the last block writes dk and dv, the others add.
    for s, e, probs, softmax_cache, drop_cache in reversed(blocks):
        accumulate = e != T
        dy_block = dy[:, :, s:e]
        # dv (+)= probs^T dy
        batched_matmul(probs, dy_block, transpose_a=True, out=dv[:, :, :e], accumulate=accumulate)
        dprobs, _ = dropout.backward(batched_matmul(dy_block, v[:, :, :e], transpose_b=True), drop_cache)  # dy v^T
        dscores, _ = softmax.backward(dprobs, softmax_cache)
        batched_matmul(dscores, k[:, :, :e], out=dq[:, :, s:e])  # dq = dscores k
        # dk (+)= dscores^T q
        batched_matmul(dscores, q[:, :, s:e], transpose_a=True, out=dk[:, :, :e], accumulate=accumulate)
    dqkv = dqkv_heads.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * n_head * D)  # (B, T, 3C), one copy
    dx, attn_grads = linear.backward(dqkv, attn_cache)
    return dx, prefixed(attn_grads, proj_grads)


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
    y = xp.empty(x.shape, dtype=x.dtype)  # (B, T_new, C), C-contiguous, as in forward
    matmul_into(probs, v_all, heads_view(y, n_head))
    out, _ = linear.forward(y, c_proj_w, c_proj_b)
    return out
