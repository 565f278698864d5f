"""LoRA (Hu et al. 2021): a frozen linear layer plus a trained low-rank update.

    y = x W + b + s dropout(x) A^T B^T,        s = alpha / r

W (in, out) and b are the base model's, frozen (GPT-2's Conv1D layout, as in
linear.py); A (r, in) and B (out, r) are the adapter, laid out as PEFT stores
`lora_A.weight` and `lora_B.weight` (torch's Linear keeps (out, in)). B starts
at zero, so a fresh adapter leaves the base model's function exactly as it was;
A starts as PEFT's (Kaiming-uniform, a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))).
Dropout acts on the adapter's input only, as in PEFT.

Backward, with xd = dropout(x) (N, in), u = xd A^T (N, r), so y = ... + s u B^T:

    dB = s dout^T u                  (out, r)   the linear rule for u B^T
    du = s dout B                    (N, r)
    dA = du^T xd                     (r, in)    the linear rule for xd A^T
    dx = dout W^T + dropout'(du A)   (N, in)    x feeds the frozen path and the adapter: the two add

W and b get no gradient: their product x^T dout (in x out, as costly as the
forward's x W) is never formed, and no optimizer keeps state for them. The
adapter's four products have r in place of one of in, out: at r = 8 and GPT-2's
C = 768, about 1% of the frozen ones.

How the layers meet it: linear.forward hands a weight wrapped as `Frozen` (no
adapter: only dx) or `Adapted` (W with its adapter) to `forward` here, and
linear.backward hands back a `Cache`; attention, MLP and SwiGLU stay as they are.
"""

import math
from dataclasses import dataclass

from minigpt.errors import MinigptError
from minigpt.nn import dropout

# The linear layers an adapter may target, as --lora_targets spells them, and their names inside a block.
TARGETS = {"c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj", "c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}


def parse_targets(text: str) -> tuple:
    """--lora_targets `c_attn,attn.c_proj` -> ("c_attn", "attn.c_proj"), each one of TARGETS."""
    targets = tuple(t.strip() for t in str(text).split(",") if t.strip())
    if not targets or any(t not in TARGETS for t in targets):
        raise MinigptError(f"--lora_targets must name some of {', '.join(TARGETS)} (comma-separated), got {text!r}")
    return targets


@dataclass(frozen=True)
class LoraConfig:
    """An adapter's rank r, alpha (the update is scaled by alpha / r), dropout and target layers (TARGETS' keys)."""

    rank: int = 8
    alpha: float = 8.0  # PEFT's default
    dropout: float = 0.0
    targets: tuple = ("c_attn", "attn.c_proj")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def modules(self) -> list:
        """The targets' names inside a block (`attn.c_attn`, ...)."""
        return [TARGETS[t] for t in self.targets]


class Frozen:
    """A linear layer's frozen weight W (in, out): the layer returns dx and no gradient for W or b."""

    def __init__(self, weight):
        self.weight = weight

    @property
    def shape(self):
        return self.weight.shape


class Adapted(Frozen):
    """A frozen W with its adapter: A (r, in), B (out, r), the scale alpha / r, and the adapter's dropout."""

    def __init__(self, weight, lora_A, lora_B, scale, rate=0.0, rng=None, training=False):
        super().__init__(weight)
        self.lora_A, self.lora_B, self.scale = lora_A, lora_B, scale
        self.rate, self.rng, self.training = rate, rng, training


class Cache(tuple):
    """forward's cache: (W, lead axes, the adapter's (xd2, u, A, B, scale, dropout cache, x's shape) or None)."""


def wrap_block(params, adapters, prefix, config, rng=None, training=False):
    """A block's parameters with every linear layer's weight wrapped: `Adapted` for the targets, whose A and B
    are adapters[prefix + module + ".lora_A.weight"], ..., `Frozen` for the others. No rng: no adapter dropout."""
    wrapped = dict(params)
    targets = set(config.modules())
    for name, weight in params.items():
        module = name[: -len(".weight")]
        if name.startswith("ln_") or not name.endswith(".weight"):
            continue  # norms and biases: plain arrays, whose gradients the model drops
        if module in targets:
            A, B = adapters[f"{prefix}{module}.lora_A.weight"], adapters[f"{prefix}{module}.lora_B.weight"]
            wrapped[name] = Adapted(weight, A, B, config.scale, config.dropout, rng, training and rng is not None)
        else:
            wrapped[name] = Frozen(weight)
    return wrapped


def init_A(rng, rank, fan_in, dtype):
    """PEFT's init of lora_A: torch's kaiming_uniform_(a=sqrt(5)), bound = gain sqrt(3 / fan_in) with
    gain = sqrt(2 / (1 + a^2)) = sqrt(1/3): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return (rng.random((rank, fan_in), dtype=dtype) * (2 * bound) - bound).astype(dtype)


def forward(x, frozen, bias=None):
    """x: (..., in) -> y (..., out) = x W + b (+ s dropout(x) A^T B^T when adapted)."""
    W = frozen.weight
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    y = x2 @ W  # (N, out)
    if bias is not None:
        y += bias
    adapter = None
    if isinstance(frozen, Adapted):
        xd, drop_cache = dropout.forward(x, frozen.rate, frozen.rng, frozen.training)  # rows first, as dropout wants
        xd2 = xd.reshape(x2.shape)
        u = xd2 @ frozen.lora_A.T  # (N, r)
        y += (u @ frozen.lora_B.T) * frozen.scale  # (N, out), PEFT's order: B(A(x)) * scaling
        adapter = (xd2, u, frozen.lora_A, frozen.lora_B, frozen.scale, drop_cache, x.shape)
    return y.reshape(*lead, W.shape[1]), Cache((W, lead, adapter))


def backward(dout, cache):
    """Returns dx (..., in) and {"lora_A.weight": dA, "lora_B.weight": dB} ({} for a frozen layer without one)."""
    W, lead, adapter = cache
    dout2 = dout.reshape(-1, W.shape[1])  # (N, out)
    dx2 = dout2 @ W.T  # (N, in)
    grads = {}
    if adapter is not None:
        xd2, u, A, B, scale, drop_cache, x_shape = adapter
        grads["lora_B.weight"] = (dout2.T @ u) * scale  # (out, r)
        du = (dout2 @ B) * scale  # (N, r)
        grads["lora_A.weight"] = du.T @ xd2  # (r, in)
        dxd, _ = dropout.backward((du @ A).reshape(x_shape), drop_cache)
        dx2 += dxd.reshape(dx2.shape)
    return dx2.reshape(*lead, W.shape[0]), grads
