"""What a training step holds in memory, from the model's shapes alone: the plan scripts/memory.py prints
and train.py checks before it allocates anything.

Bytes, s = 4 (float32) or 8 (float64), P the parameters, P_t those that train
(all of them, or with LoRA the adapters'), R ranks, b the rows of one slice
(minigpt.parallel), T the context, C the width, M the MLP's width, H the heads,
V the vocabulary:

    parameters       s P                        (LoRA: + s P_t for the adapters)
    gradients        s P_t                      the optimizer's flat gradient buffer
    optimizer        2 s P_t / R                AdamW's two moments (ZeRO-1 shards them over R ranks)
    activations      per block (minigpt.fast's GPT-2 layers, measured from their caches):
                       s (8 b T C + 2 b T M + 2 b T) + A (s + [s + 1])      A = b H sum_blocks (e - s0) e,
                       the attention probabilities of the causal query blocks (minigpt.fast.attention);
                       [..] with dropout: the dropped copy and its 1-byte mask, and 2 b T C mask bytes;
                       LoRA: minus s b T (input width) per frozen linear layer (no dW needs its input),
                       plus s b T r per adapter (x A^T), and b T (input width) mask bytes with --lora_dropout
                     --recompute: s b T C per block (its input), and one block's cache as workspace
                     outside the blocks: s (2 b T C + b T V) + 25 b T (the logits, ln_f, the head's input)
                     times the slices in flight: every worker thread holds one slice's
    workspace        the backward's largest temporaries: the head's dW (s V C, not with LoRA), a block's
                     gradients (s 12 C^2), dqkv and one query block's dscores
    runtime          Python, NumPy, the BLAS threads' buffers, the data: RUNTIME_BYTES, measured
    peak             the step: everything above (loading holds the parameters once: minigpt.weights fills
                     an empty model, and minigpt.optim packs them into its flat buffer one by one)

The variants (RMSNorm, rotary, grouped-query attention, the MLP activations) use
GPT-2's count with their own M; the exact ones are tests/test_memory_plan.py's.
"""

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from minigpt.errors import MinigptError
from minigpt.hub import ADAPTER_FILES, GPT2_NAMES
from minigpt.model_config import GPTConfig, mlp_hidden, param_shapes
from minigpt.nn.lora import TARGETS
from minigpt.parallel import split_step
from minigpt.weights import config_from_hf

QUERY_BLOCK = 128  # minigpt.fast.attention's block of query rows
RUNTIME_BYTES = 300 * 2**20  # Python + NumPy + OpenBLAS buffers + a token file, measured: ~250-300 MB
UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "K": 2**10, "M": 2**20, "G": 2**30,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(text: str) -> int:
    """`24GB`, `512MB`, `1.5G` (binary units) -> bytes."""
    cleaned = str(text).strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in UNITS or not value > 0:
        raise MinigptError(f"--memory expects a size like 24GB or 512MB, got {text!r}")
    return int(value * UNITS[unit])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


@dataclass
class Step:
    """The run's shape: what the plan needs besides the model's config."""

    batch_size: int = 1
    block_size: int = 1024
    gradient_accumulation_steps: int = 1
    dtype: str = "float32"
    recompute: bool = False
    lora_rank: int = 0
    lora_targets: tuple = ("c_attn", "attn.c_proj")
    workers: int = 1
    ranks: int = 1
    zero: bool = True
    dropout: float = 0.0
    lora_dropout: float = 0.0
    device: str = "cpu"
    scratch: bool = False  # the model is made for this run, its context (wpe) block_size: a shorter one shrinks it


@dataclass
class Plan:
    config: GPTConfig
    step: Step
    parameters: int = 0
    trainable: int = 0
    rows: dict = field(default_factory=dict)  # name -> bytes, in print order
    per_block: int = 0
    blocks: int = 0
    outside: int = 0
    rows_in_flight: int = 0
    setup_peak: int = 0
    step_peak: int = 0

    @property
    def peak(self) -> int:
        return max(self.setup_peak, self.step_peak)

    def report(self, memory=None) -> str:
        c, st = self.config, self.step
        lines = [f"model: {c.n_layer} layers, {c.n_head} heads, n_embd {c.n_embd}, vocab {c.vocab_size}: "
                 f"{self.parameters:,} parameters, {self.trainable:,} trained"
                 + (f" (LoRA rank {st.lora_rank} on {', '.join(st.lora_targets)})" if st.lora_rank else ""),
                 f"step: batch {st.batch_size} x {st.block_size} tokens, {st.gradient_accumulation_steps} micro-batches, "
                 f"{st.workers} worker(s) x {st.ranks} rank(s), {st.dtype}, device {st.device}"
                 + (", --recompute" if st.recompute else ""),
                 ""]
        for name, n in self.rows.items():
            lines.append(f"  {name:<34}{gib(n):>12}")
        lines.append(f"    {f'per block ({self.rows_in_flight} row(s) in flight)':<32}{gib(self.per_block):>12}"
                     f"   x {c.n_layer} blocks = {gib(self.blocks)}")
        lines.append(f"    {'outside blocks (logits, ln_f)':<32}{gib(self.outside):>12}")
        lines.append(f"  {'peak while setting up':<34}{gib(self.setup_peak):>12}")
        lines.append(f"  {'peak in a step':<34}{gib(self.step_peak):>12}")
        lines.append(f"  {'peak':<34}{gib(self.peak):>12}")
        if memory:
            best = largest_batch(self.config, self.step, memory)
            fits = "fits" if self.peak <= memory else "does NOT fit"
            lines.append(f"in {gib(memory)}: this step {fits}; the largest --batch_size that fits: "
                         + (str(best) if best else "none (not even 1)"))
        return "\n".join(lines)


def _query_block_area(T: int) -> int:
    """sum over minigpt.fast.attention's causal query blocks of (rows x keys seen), in closed form (T may be huge).

    Full block j < k = T // Q holds Q rows that see (j + 1) Q keys: Q^2 k (k + 1) / 2 in all; the last r = T % Q
    rows see all T keys."""
    k, r = divmod(T, QUERY_BLOCK)
    return QUERY_BLOCK * QUERY_BLOCK * k * (k + 1) // 2 + r * T


def block_activation_bytes(config: GPTConfig, rows: int, T: int, itemsize: int, dropout: float,
                           lora_rank: int = 0, targets=(), lora_dropout: float = 0.0) -> int:
    """The bytes one block's cache holds for `rows` sequences of T tokens (minigpt.fast's layers).

    With LoRA (lora_rank > 0) a frozen linear layer keeps no copy of its input (it needs only dx = dout W^T),
    and an adapted one keeps x A^T (rows T r), and with dropout its mask (the dropped input in place of the input)."""
    C, M, H = config.n_embd, mlp_hidden(config), config.n_head
    mlp_factor = {"gelu_tanh": 2, "gelu": 3, "relu2": 2, "swiglu": 5}[config.activation]
    probs = rows * H * _query_block_area(T)
    n = itemsize * (8 * rows * T * C + mlp_factor * rows * T * M + 2 * rows * T) + probs * itemsize
    if dropout:
        n += probs * (itemsize + 1) + 2 * rows * T * C
    if lora_rank:
        inputs = {"attn.c_attn": C, "attn.c_proj": C, "mlp.c_fc": C, "mlp.c_proj": M}  # each layer's input width
        for module, width in inputs.items():
            if module not in targets:
                n -= itemsize * rows * T * width  # frozen: its input is no longer kept for a dW
            else:
                # x A^T; with dropout the dropped input replaces the input, plus its 1-byte mask
                n += itemsize * rows * T * lora_rank + (rows * T * width if lora_dropout else 0)
    return n


def plan(config: GPTConfig, step: Step) -> Plan:
    s = np.dtype(step.dtype).itemsize
    shapes = param_shapes(config)
    P = sum(math.prod(shape) for shape in shapes.values())
    C, V, T = config.n_embd, config.vocab_size, step.block_size
    targets = [TARGETS[t] for t in step.lora_targets] if step.lora_rank else []
    adapters = 0
    for i in range(config.n_layer):
        for module in targets:
            fan_in, fan_out = shapes[f"transformer.h.{i}.{module}.weight"]
            adapters += step.lora_rank * (fan_in + fan_out)
    trainable = adapters if step.lora_rank else P
    result = Plan(config, step, parameters=P, trainable=trainable)

    # rows in flight: each worker thread of a rank runs one slice at a time (minigpt.parallel.split_step)
    shares = split_step(step.gradient_accumulation_steps, step.batch_size, step.ranks * step.workers)[:step.workers]
    slice_rows = [max(p.stop - p.start for p in share) for share in shares if share]
    rows = sum(slice_rows)
    result.rows_in_flight = rows
    biggest = max(slice_rows)

    def blocks_for(r):
        one = block_activation_bytes(config, r, T, s, step.dropout, step.lora_rank, targets, step.lora_dropout)
        return (s * r * T * C if step.recompute else one), one

    kept, full_block = blocks_for(rows)
    result.per_block = kept
    result.blocks = kept * config.n_layer
    result.outside = s * (2 * rows * T * C + rows * T * V) + 25 * rows * T + (rows * T * C if step.dropout else 0)
    head_dw = 0 if step.lora_rank else s * V * C
    H = config.n_head
    block_backward = s * (12 * C * C if not step.lora_rank else 0) + s * biggest * T * (6 * C + 2 * H * QUERY_BLOCK)
    workspace = max(head_dw + s * biggest * T * C, block_backward)
    if step.recompute:
        workspace += blocks_for(biggest)[1]  # the one block being recomputed
    shard = step.ranks if step.zero and step.ranks > 1 else 1
    result.rows = {
        "parameters": s * (P + adapters),
        "gradients": s * trainable,
        "optimizer state (AdamW m, v)": 2 * s * trainable // shard,
        "activations": result.blocks + result.outside,
        "workspace": workspace,
        "runtime (Python, NumPy, BLAS)": RUNTIME_BYTES,
    }
    fixed = s * (P + adapters) + s * trainable + 2 * s * trainable // shard + RUNTIME_BYTES
    result.step_peak = fixed + result.blocks + result.outside + workspace
    result.setup_peak = fixed
    return result


def largest_batch(config: GPTConfig, step: Step, memory: int, limit: int = 1 << 14):
    """The largest --batch_size (the rest of `step` kept) whose plan fits `memory` bytes; None if not even 1."""
    fits = lambda b: plan(config, replace(step, batch_size=b)).peak <= memory  # noqa: E731
    if not fits(1):
        return None
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def machine_memory(device: str = "cpu", available: bool = False) -> int | None:
    """This machine's memory in bytes (MemTotal; `available`: MemAvailable, what it can give now), or the GPU's."""
    if device != "cpu":
        try:
            import cupy  # here: only a GPU plan asks the device

            free, total = cupy.cuda.runtime.memGetInfo()
            return int(free if available else total)
        except Exception:  # no CuPy or no device: the caller says what to give instead
            return None
    key = "MemAvailable:" if available else "MemTotal:"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def config_of(source) -> GPTConfig:
    """The GPTConfig of a GPT-2 name (no download), or of a checkpoint directory's config.json (no weights read;
    a LoRA adapter's: its base's)."""
    name = str(source)
    if name in GPT2_NAMES:
        return GPTConfig.preset(name)
    directory = Path(source)
    for candidate in (directory, directory / "best", directory / "latest"):
        if (candidate / ADAPTER_FILES[0]).is_file():
            adapter = json.loads((candidate / ADAPTER_FILES[0]).read_text())
            base = adapter.get("base_model_name_or_path", "")
            beside = candidate / base
            return config_of(beside if not Path(base).is_absolute() and beside.is_dir() else base)
        if (candidate / "config.json").is_file():
            path = candidate / "config.json"
            try:
                return config_from_hf(json.loads(path.read_text()), path)
            except ValueError as err:
                raise MinigptError(f"{path} is not valid JSON ({err})") from None
    raise MinigptError(f"{source} is neither a GPT-2 name ({', '.join(GPT2_NAMES)}) nor a directory with config.json")


def suggestions(config: GPTConfig, step: Step, memory: int) -> list:
    """What would fit in `memory`, as options to give: --recompute, a smaller batch with more accumulation,
    --lora_rank 8, fewer workers."""
    out = []
    fits = lambda st: plan(config, st).peak <= memory  # noqa: E731
    if not step.recompute and fits(replace(step, recompute=True)):
        out.append("--recompute true")
    b = step.batch_size // 2  # halving: a few plans, whatever the batch size
    while b >= 1:
        accumulation = -(-step.gradient_accumulation_steps * step.batch_size // b)  # the same rows per step
        if fits(replace(step, batch_size=b, gradient_accumulation_steps=accumulation)):
            out.append(f"--batch_size {b} --gradient_accumulation_steps {accumulation}")
            break
        b //= 2
    if not step.lora_rank:
        for extra in ({}, {"recompute": True}):
            if fits(replace(step, lora_rank=8, **extra)):
                out.append("--lora_rank 8" + (" --recompute true" if extra else ""))
                break
    for w in range(min(step.workers - 1, 64), 0, -1):
        if fits(replace(step, workers=w)):
            out.append(f"--workers {w}")
            break
    if not out:  # not even one row of this context: the longest context that fits, one row at a time
        t = largest_block_size(config, replace(step, batch_size=1), memory)
        if t is not None:
            out.append(f"--batch_size 1 --block_size {t}")
    return out


def largest_block_size(config: GPTConfig, step: Step, memory: int):
    """The largest --block_size (up to step.block_size) whose plan fits `memory`; None if not even 1.

    A model trained from scratch has the context it trains on (its wpe grows with it); a loaded one keeps its own."""
    fits = lambda t: plan(replace(config, block_size=t) if step.scratch else config,  # noqa: E731
                          replace(step, block_size=t)).peak <= memory
    if not fits(1):
        return None
    lo, hi = 1, step.block_size
    while hi - lo > 1:  # fits(lo), and hi is the first known not to (or the asked size)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return hi if fits(hi) else lo


def check_fits(config: GPTConfig, step: Step, memory=None) -> Plan:
    """Raise a one-line MinigptError when the step's plan does not fit `memory` (default: what this machine
    can give now, plus the runtime this process already holds), naming the options that would fit."""
    result = plan(config, step)
    if memory is None:
        available = machine_memory(step.device, available=True)
        memory = None if available is None else available + (RUNTIME_BYTES if step.device == "cpu" else 0)
    if memory is None or result.peak <= memory:
        return result
    options = suggestions(config, step, memory)
    what = "; ".join(options) if options else "a smaller model or a machine with more memory"
    raise MinigptError(f"this run needs about {gib(result.peak)} at its peak but {gib(memory)} is available "
                       f"(python scripts/memory.py shows the plan); what would fit: {what}")
