"""The KV-cache step of a block (inference: no dropout, nothing kept for a backward), on the fast layers."""

from minigpt.fast import LAYERS, attention
from minigpt.nn.block import mlp_forward


def forward_cached(x, p, n_head, keys, values, length, norm="layernorm", activation="gelu_tanh",
                   n_kv_head=None, rope=None, mask=None):
    """Inference with this layer's KV cache (see attention.forward_cached)."""
    norm = LAYERS[norm]
    h, _ = norm.forward(x, p["ln_1.weight"], p.get("ln_1.bias"))
    x = x + attention.forward_cached(
        h, p["attn.c_attn.weight"], p.get("attn.c_attn.bias"), p["attn.c_proj.weight"], p.get("attn.c_proj.bias"),
        n_head, keys, values, length, n_kv_head, rope, mask,
    )
    h, _ = norm.forward(x, p["ln_2.weight"], p.get("ln_2.bias"))
    h, _ = mlp_forward(h, p, activation, LAYERS)
    x += h
    return x
