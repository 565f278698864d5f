"""GPT-2's configuration: the model's fields, said once, and the checks that keep a config buildable.

GPTConfig holds every field of the model: its shape (n_layer, n_head, n_embd,
block_size, vocab_size), dropout and bias, and the switches (SWITCHES, n_kv_head,
mlp_hidden, rope_base) that swap in the variants modern models use, GPT-2's value
the default of each. Training options (minigpt.config), checkpoint files
(minigpt.weights) and the trainer derive their model fields from it.
check_shape / check_switches say in one line what is wrong with a config, spelling
each field as the user wrote it (`--n_head` on the command line). param_shapes is
the model's parameters a config makes, by Hugging Face's names (mlp_hidden the MLP's width).
"""

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from minigpt.errors import MinigptError, TokenIdError
from minigpt.hub import GPT2_BLOCK_SIZE, GPT2_SIZES, GPT2_VOCAB_SIZE
from minigpt.nn import rotary

def shape(default, help: str):
    """A field of the model's shape (or dropout, bias); `help` is its line in train.py --help."""
    return field(default=default, metadata={"help": help})


def switch(*choices, help: str, default=None):
    """A field that swaps a layer for a variant: its choices, GPT-2's first and the default.

    Without choices it is a switch's number (n_kv_head, mlp_hidden, rope_base),
    `default` its GPT-2 value. Every switch is saved in config.json's "minigpt"
    object (minigpt.weights) and is an option of train.py (minigpt.config).
    """
    metadata = {"help": help, "switch": True}
    if choices:
        metadata["choices"] = choices
        default = choices[0]
    return field(default=default, metadata=metadata)


@dataclass
class GPTConfig:
    """The model's fields, the only place they are spelled out: TrainConfig, config.json and the trainer read them here."""

    n_layer: int = shape(12, "transformer blocks")
    n_head: int = shape(12, "attention heads per block")
    n_embd: int = shape(768, "width of the residual stream (a multiple of n_head)")
    block_size: int = shape(1024, "context length in tokens")
    vocab_size: int = shape(50257, "tokens in the vocabulary (train.py takes the tokenizer's)")
    dropout: float = shape(0.0, "dropout probability while training, in [0, 1)")
    bias: bool = shape(True, "biases in the linear layers and LayerNorms (GPT-2 has them)")
    # the switches (module docstring of minigpt.model), GPT-2's values the defaults
    norm: str = switch("layernorm", "rmsnorm", help="layernorm (GPT-2) or rmsnorm")
    activation: str = switch("gelu_tanh", "gelu", "relu2", "swiglu", help=(
        "the MLP's: gelu_tanh (GPT-2), gelu (exact, erf), relu2 (squared ReLU) or swiglu (gated, 3 matrices)"))
    position: str = switch("learned", "rotary", help="learned (GPT-2's wpe) or rotary (RoPE on q and k, no wpe)")
    tie_embeddings: bool = switch(True, False, help="the LM head reuses wte (GPT-2); false: a separate lm_head.weight")
    n_kv_head: int | None = switch(help=(  # None: n_head (GPT-2's multi-head attention)
        "key/value heads, n_head a multiple of it: grouped query attention (1: multi query; None: n_head)"))
    mlp_hidden: int | None = switch(help=(  # None: 4 n_embd, or about 8/3 n_embd for swiglu (see model.mlp_hidden)
        "the MLP's hidden width (None: 4 n_embd, or round(8 n_embd / 3) for swiglu)"))
    rope_base: float = switch(default=rotary.ROPE_BASE, help=(
        "RoPE's base: the angle of channel pair i at position t is t * rope_base^(-2i/head_dim)"))

    PRESETS = GPT2_SIZES  # the shapes of OpenAI's four GPT-2 models, by name

    def __post_init__(self):
        check_shape(asdict(self))
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head

    def is_gpt2(self) -> bool:
        """Every switch at GPT-2's value: the model is a GPT-2, and its files are GPT-2 files."""
        return (all(getattr(self, name) == choices[0] for name, choices in SWITCHES.items())
                and self.n_kv_head == self.n_head and self.mlp_hidden in (None, 4 * self.n_embd))

    @classmethod
    def preset(cls, name, **overrides):
        if name not in cls.PRESETS:
            raise MinigptError(f"unknown model {name!r}: use one of {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], "block_size": GPT2_BLOCK_SIZE, "vocab_size": GPT2_VOCAB_SIZE, **overrides})

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# the values of each switch with choices, GPT-2's first
SWITCHES = {f.name: f.metadata["choices"] for f in fields(GPTConfig) if "choices" in f.metadata}
# every switch, choices or number: the keys of config.json's "minigpt" object
SWITCH_FIELDS = tuple(f.name for f in fields(GPTConfig) if f.metadata.get("switch"))


def check_shape(values: dict, option=str) -> None:
    """Raise a MinigptError for a model minigpt cannot build, from whichever shape fields `values` has.

    `option` spells a field's name as the user wrote it (train.py's `--n_head`).
    """
    for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
        value = values.get(name, 1)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise MinigptError(f"{option(name)} must be a positive integer, got {value!r}")
    if values["n_embd"] % values["n_head"]:
        raise MinigptError(f"{option('n_embd')} {values['n_embd']} is not divisible by {option('n_head')} "
                           f"{values['n_head']}: each head gets n_embd / n_head channels")
    if not 0.0 <= values.get("dropout", 0.0) < 1.0:
        raise MinigptError(f"{option('dropout')} must be in [0, 1), got {values['dropout']}")
    check_switches(values, option)


def check_switches(values: dict, option=str) -> None:
    """Raise a MinigptError for a switch value (or combination) minigpt cannot build."""
    for name, choices in SWITCHES.items():
        if name in values and (values[name] not in choices or type(values[name]) is not type(choices[0])):
            raise MinigptError(f"{option(name)} must be one of {', '.join(str(c).lower() for c in choices)}, "
                               f"got {values[name]!r}")
    n_head, n_kv_head = values.get("n_head", 1), values.get("n_kv_head")
    if n_kv_head is not None:
        if not isinstance(n_kv_head, (int, np.integer)) or isinstance(n_kv_head, bool) or n_kv_head < 1:
            raise MinigptError(f"{option('n_kv_head')} must be a positive integer, got {n_kv_head!r}")
        if n_head % n_kv_head:
            raise MinigptError(f"{option('n_head')} {n_head} is not a multiple of {option('n_kv_head')} {n_kv_head}: "
                               f"each key/value head serves n_head / n_kv_head query heads")
    hidden = values.get("mlp_hidden")
    if hidden is not None and (not isinstance(hidden, (int, np.integer)) or isinstance(hidden, bool) or hidden < 1):
        raise MinigptError(f"{option('mlp_hidden')} must be a positive integer, got {hidden!r}")
    base = values.get("rope_base", rotary.ROPE_BASE)
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not 1.0 < base < math.inf:
        raise MinigptError(f"{option('rope_base')} must be a number above 1, got {base!r}")
    if values.get("position") == "rotary" and "n_embd" in values and (values["n_embd"] // n_head) % 2:
        raise MinigptError(f"{option('position')} rotary rotates channel pairs: n_embd / n_head = "
                           f"{values['n_embd'] // n_head} must be even")


def mlp_hidden(config) -> int:
    """The MLP's hidden width: mlp_hidden when given, else GPT-2's 4C, or round(8C/3) for swiglu,
    whose three C x h matrices then hold as many weights as the 4x MLP's two (3 h = 8 C)."""
    if config.mlp_hidden is not None:
        return config.mlp_hidden
    return round(8 * config.n_embd / 3) if config.activation == "swiglu" else 4 * config.n_embd


def param_shapes(config):
    """Hugging Face GPT2LMHeadModel's parameter names and shapes, in its order.

    The switches add or drop tensors: no wpe with rotary positions, no LayerNorm
    bias with RMSNorm, mlp.c_gate with swiglu, lm_head.weight (V, C) untied, and
    c_attn's width is C + 2 n_kv_head D with grouped-query attention.
    """
    C, V, D = config.n_embd, config.vocab_size, config.n_embd // config.n_head
    qkv, hidden = C + 2 * config.n_kv_head * D, mlp_hidden(config)
    shapes = {"transformer.wte.weight": (V, C)}
    if config.position == "learned":
        shapes["transformer.wpe.weight"] = (config.block_size, C)
    for i in range(config.n_layer):
        h = f"transformer.h.{i}."
        layer = {
            "ln_1.weight": (C,), "ln_1.bias": (C,),
            "attn.c_attn.weight": (C, qkv), "attn.c_attn.bias": (qkv,),
            "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
            "ln_2.weight": (C,), "ln_2.bias": (C,),
            "mlp.c_fc.weight": (C, hidden), "mlp.c_fc.bias": (hidden,),
        }
        if config.activation == "swiglu":
            layer.update({"mlp.c_gate.weight": (C, hidden), "mlp.c_gate.bias": (hidden,)})
        layer.update({"mlp.c_proj.weight": (hidden, C), "mlp.c_proj.bias": (C,)})
        shapes.update({h + k: s for k, s in layer.items() if _has_param(config, k)})
    shapes["transformer.ln_f.weight"] = (C,)
    if _has_param(config, "ln_f.bias"):
        shapes["transformer.ln_f.bias"] = (C,)
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def _has_param(config, name):
    if not name.endswith(".bias"):
        return True
    return config.bias and not (name.startswith("ln_") and config.norm == "rmsnorm")  # RMSNorm has no bias


def check_token_range(idx, vocab_size: int) -> None:
    """Refuse token ids below 0 (NumPy would wrap -1 round to the last token) or at vocab_size and above.

    Host arrays only (a min and a max over the ids): a device array would cost a sync.
    """
    idx = np.asarray(idx)
    if idx.size and idx.dtype.kind in "iu":
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= vocab_size:
            raise TokenIdError(f"token id {low if low < 0 else high} is outside the model's vocabulary of "
                               f"{vocab_size} tokens (ids 0..{vocab_size - 1})")
