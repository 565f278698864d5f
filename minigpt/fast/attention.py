"""The KV-cache step of attention (moved here from minigpt.nn.attention unchanged)."""

import math

from minigpt.backend import array_module, matmul_into
from minigpt.nn import linear, rotary, softmax
from minigpt.nn.attention import heads_view, repeat_kv, split_qkv, transpose


# -- inference -------------------------------------------------------------------------


def forward_cached(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, keys, values, length, n_kv_head=None, rope=None):
    """Inference with a KV cache: x (B, T_new, C) at positions length .. length + T_new - 1.

    keys, values: this layer's preallocated (B, KV, block_size, D) buffers; the new
    keys and values are written at [length : length + T_new] and the queries attend
    to everything up to there (the mask lets new query i see keys j <= length + i).
    rope: the rotary tables of positions length .. length + T_new - 1.
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
    probs, _ = softmax.forward(q @ transpose(k_all), 1.0 / math.sqrt(q.shape[-1]))
    y = xp.empty(x.shape, dtype=x.dtype)  # (B, T_new, C), C-contiguous, as in forward_blocked
    matmul_into(probs, v_all, heads_view(y, n_head))
    out, _ = linear.forward(y, c_proj_w, c_proj_b)
    return out
