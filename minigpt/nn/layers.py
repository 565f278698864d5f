"""The plain table: the layer module behind each name the model looks up.

Every entry has forward(...) -> (out, cache) and backward(dout, cache) -> (dx, grads).
The names: "attention"; the norms as GPTConfig.norm spells them ("layernorm",
"rmsnorm"); the MLP's activations as GPTConfig.activation spells them
("gelu_tanh", "gelu", "relu2", and the gated network "swiglu"); the loss,
"cross_entropy", and "cross_entropy_in_place", the loss a caller lets work in
the logits' memory (the plain one never does). minigpt.fast.LAYERS is this
table with the fast versions swapped in; GPT(config, fast=False) runs this one.
"""

from minigpt.nn import attention, cross_entropy, gelu, gelu_erf, layernorm, relu2, rmsnorm, swiglu

LAYERS = {
    "attention": attention,
    "layernorm": layernorm,
    "rmsnorm": rmsnorm,
    "gelu_tanh": gelu,
    "gelu": gelu_erf,
    "relu2": relu2,
    "swiglu": swiglu,
    "cross_entropy": cross_entropy,
    "cross_entropy_in_place": cross_entropy,
}
