"""Causal multi-head self-attention with a fused qkv projection (GPT-2's `attn`).

Forward, for x of shape (B, T, C), n_head heads of head_dim D = C / n_head:

    q | k | v = x @ W_attn + b_attn                      # (B, T, 3C), split on the last axis
    q, k, v  -> (B, H, T, D)                             # head h is the h-th chunk of D columns
    scores = q @ k^T                                     # (B, H, T, T)
    probs = causal_softmax(scores / sqrt(D))             # row i sees keys j <= i
    probs = dropout(probs)                               # attn_pdrop, training only
    y = probs @ v                                        # (B, H, T, D)
    y -> (B, T, C);  out = y @ W_proj + b_proj

Backward runs the same graph in reverse. c_proj's backward turns dout into
dy = dL/dy (B, H, T, D), then:

    dprobs = dy @ v^T,   dv = probs^T @ dy               # from y = probs @ v (as for a linear layer)
    dscores = softmax_backward(dropout_backward(dprobs))  # p_k (dp_k - sum_j dp_j p_j) / sqrt(D)
    dq = dscores @ k,    dk = dscores^T @ q              # from scores = q @ k^T

and dq | dk | dv are stacked back into the (B, T, 3C) layout of qkv before the
backward of the c_attn linear layer. (minigpt/fast/attention.py computes the
same without the scores that the mask zeroes, and on the GPU one cuBLAS call per product.)

Two variants change how q, k and v are made (`project_qkv`):

* Grouped-query attention (`n_kv_head` = KV < H; KV = 1 is multi-query): c_attn
  makes H query heads but only KV key and value heads, its output columns laid
  out q (H D) | k (KV D) | v (KV D). The H / KV = G consecutive query heads
  h = j G .. j G + G - 1 share key/value head j: k is repeated, k_rep[h] = k[h // G],
  and attention runs as above. Backward: k[j] was used by G heads, so its
  gradient is the sum of theirs (a used-several-times variable gets the sum):

      dk[j] = sum_{g < G} dk_rep[j G + g]            (the same for v)

* Rotary position embedding (`rope` = the (cos, sin) tables of minigpt.nn.rotary):
  q and k are rotated by their position's angle after the split (and before k is
  repeated); the backward rotates dq and dk back (the inverse rotation), as
  minigpt/nn/rotary.py derives.
"""

import math

from minigpt.backend import array_module
from minigpt.nn import dropout, linear, rotary, softmax


def split_heads(qkv, n_head):
    """(B, T, 3C) -> q, k, v, each a (B, H, T, D) view (no copy)."""
    B, T, C3 = qkv.shape
    qkv = qkv.reshape(B, T, 3, n_head, C3 // (3 * n_head)).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, D)
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
    dk, dv = sum_kv(dk, n_kv_head), sum_kv(dv, n_kv_head)  # heads sharing a key/value head: their gradients add
    if rope is not None:
        dq, _ = rotary.backward(dq, rope)  # the inverse rotation
        dk, _ = rotary.backward(dk, rope)
    dqkv = array_module(dq).concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
    return linear.backward(dqkv, attn_cache)  # dqkv: (B, T, (H + 2 KV) D), GPT-2's dq | dk | dv


def forward(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attn_pdrop=0.0, rng=None, training=False,
            n_kv_head=None, rope=None):
    """x: (B, T, C) -> out: (B, T, C), over the full (T, T) score matrix."""
    q, k, v, qkv_cache = project_qkv(x, c_attn_w, c_attn_b, n_head, n_kv_head, rope)  # (B, H, T, D) each
    scores = q @ transpose(k)  # (B, H, T, T)
    probs, softmax_cache = softmax.forward(scores, 1.0 / math.sqrt(q.shape[-1]))
    probs, drop_cache = dropout.forward(probs, attn_pdrop, rng, training)
    y = merge_heads(probs @ v)  # (B, T, C)
    out, proj_cache = linear.forward(y, c_proj_w, c_proj_b)
    return out, (qkv_cache, q, k, v, probs, softmax_cache, drop_cache, proj_cache)


def backward(dout, cache):
    """Returns dx (B, T, C) and the gradients of c_attn and c_proj."""
    qkv_cache, q, k, v, probs, softmax_cache, drop_cache, proj_cache = cache
    dy, proj_grads = linear.backward(dout, proj_cache)  # (B, T, C)
    dy = heads_view(dy, q.shape[1])  # (B, H, T, D)
    dprobs = dy @ transpose(v)  # (B, H, T, T)
    dv = transpose(probs) @ dy  # (B, H, T, D)
    dprobs, _ = dropout.backward(dprobs, drop_cache)
    dscores, _ = softmax.backward(dprobs, softmax_cache)  # the 1/sqrt(D) scale included
    dq = dscores @ k
    dk = transpose(dscores) @ q
    dx, attn_grads = project_qkv_backward(dq, dk, dv, qkv_cache)
    return dx, prefixed(attn_grads, proj_grads)


def prefixed(attn_grads, proj_grads):
    """The two linear layers' gradients under the names c_attn.* and c_proj.*."""
    grads = {f"c_attn.{name}": grad for name, grad in attn_grads.items()}
    grads.update({f"c_proj.{name}": grad for name, grad in proj_grads.items()})
    return grads
