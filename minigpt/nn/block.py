"""One transformer block, pre-LN as in GPT-2:

    x = x + dropout(attn(ln_1(x)))
    x = x + dropout(mlp(ln_2(x)))

Backward of a residual connection x_out = x + f(x): the gradient reaches x
twice, straight through the skip and through f, and the two add:

    dx = dout + df(x)^T dout

`params` holds this block's parameters under Hugging Face's names without the
`transformer.h.{i}.` prefix (`ln_1.weight`, `attn.c_attn.weight`, ...); the
gradients come back under the same names.

The switches of minigpt.model.GPTConfig arrive as keywords, GPT-2's values the
defaults: `norm` (layernorm | rmsnorm, the layer behind ln_1 and ln_2),
`activation` (gelu_tanh | gelu | relu2 in mlp.py, swiglu in swiglu.py),
`n_kv_head` and `rope` (grouped-query and rotary attention, attention.py).
`layers` is the table the norm, the activation and attention are looked up in:
minigpt.nn.layers.LAYERS (the plain layers, the default) or minigpt.fast.LAYERS
(what the model runs).
"""

from minigpt.nn import dropout, mlp
from minigpt.nn.layers import LAYERS


def mlp_forward(h, params, activation, layers):
    """The block's feed-forward network: GPT-2's MLP with the activation `activation`, or SwiGLU."""
    if activation == "swiglu":
        swiglu = layers["swiglu"]
        out, cache = swiglu.forward(h, params["mlp.c_fc.weight"], params.get("mlp.c_fc.bias"),
                                    params["mlp.c_gate.weight"], params.get("mlp.c_gate.bias"),
                                    params["mlp.c_proj.weight"], params.get("mlp.c_proj.bias"))
        return out, (swiglu, cache)
    out, cache = mlp.forward(h, params["mlp.c_fc.weight"], params.get("mlp.c_fc.bias"), params["mlp.c_proj.weight"],
                             params.get("mlp.c_proj.bias"), layers[activation])
    return out, (mlp, cache)


def forward(x, params, n_head, dropout_rate=0.0, rng=None, training=False, norm="layernorm", activation="gelu_tanh",
            n_kv_head=None, rope=None, layers=LAYERS):
    """x: (B, T, C) -> (B, T, C)."""
    norm, attention = layers[norm], layers["attention"]
    h, ln_1_cache = norm.forward(x, params["ln_1.weight"], params.get("ln_1.bias"))
    h, attn_cache = attention.forward(
        h, params["attn.c_attn.weight"], params.get("attn.c_attn.bias"), params["attn.c_proj.weight"],
        params.get("attn.c_proj.bias"), n_head, dropout_rate, rng, training, n_kv_head, rope,
    )
    h, attn_drop_cache = dropout.forward(h, dropout_rate, rng, training)
    x = x + h  # a new array: the caller's x stays intact

    h, ln_2_cache = norm.forward(x, params["ln_2.weight"], params.get("ln_2.bias"))
    h, mlp_cache = mlp_forward(h, params, activation, layers)
    h, mlp_drop_cache = dropout.forward(h, dropout_rate, rng, training)
    x += h
    return x, (norm, attention, ln_1_cache, attn_cache, attn_drop_cache, ln_2_cache, mlp_cache, mlp_drop_cache)


def backward(dout, cache):
    """Returns dx (B, T, C) and this block's gradients keyed like `params`."""
    norm, attention, ln_1_cache, attn_cache, attn_drop_cache, ln_2_cache, mlp_cache, mlp_drop_cache = cache
    mlp_layer, mlp_cache = mlp_cache
    grads = {}

    # second residual: x_out = x_mid + dropout(mlp(ln_2(x_mid)))
    dh, _ = dropout.backward(dout, mlp_drop_cache)
    dh, mlp_grads = mlp_layer.backward(dh, mlp_cache)
    grads.update({f"mlp.{name}": grad for name, grad in mlp_grads.items()})
    dh, ln_2_grads = norm.backward(dh, ln_2_cache)
    grads.update({f"ln_2.{name}": grad for name, grad in ln_2_grads.items()})
    dx_mid = dout + dh

    # first residual: x_mid = x + dropout(attn(ln_1(x)))
    dh, _ = dropout.backward(dx_mid, attn_drop_cache)
    dh, attn_grads = attention.backward(dh, attn_cache)
    grads.update({f"attn.{name}": grad for name, grad in attn_grads.items()})
    dh, ln_1_grads = norm.backward(dh, ln_1_cache)
    grads.update({f"ln_1.{name}": grad for name, grad in ln_1_grads.items()})
    dx_mid += dh
    return dx_mid, grads
