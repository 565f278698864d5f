"""GPT-2's configuration: the model's fields, said once, and the checks that keep a config buildable.

GPTConfig holds every field of the model: its shape (n_layer, n_head, n_embd,
block_size, vocab_size), dropout and bias, and the switches (SWITCHES, n_kv_head,
mlp_hidden, rope_base) that swap in the variants modern models use, GPT-2's value
the default of each. Training options (minigpt.config), checkpoint files
(minigpt.weights) and the trainer derive their model fields from it.
check_shape / check_switches say in one line what is wrong with a config, spelling
each field as the user wrote it (`--n_head` on the command line).
"""

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from minigpt.errors import MinigptError
from minigpt.hub import GPT2_BLOCK_SIZE, GPT2_SIZES, GPT2_VOCAB_SIZE
from minigpt.nn import rotary

# the values of each switch, GPT-2's first
SWITCHES = {
    "norm": ("layernorm", "rmsnorm"),
    "activation": ("gelu_tanh", "gelu", "relu2", "swiglu"),
    "position": ("learned", "rotary"),
    "tie_embeddings": (True, False),
}


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


@dataclass
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257
    dropout: float = 0.0
    bias: bool = True
    # the switches (module docstring); GPT-2's values
    norm: str = "layernorm"
    activation: str = "gelu_tanh"
    position: str = "learned"
    tie_embeddings: bool = True
    n_kv_head: int | None = None  # None: n_head (GPT-2's multi-head attention)
    mlp_hidden: int | None = None  # None: 4 n_embd, or about 8/3 n_embd for swiglu (see mlp_hidden)
    rope_base: float = rotary.ROPE_BASE

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
