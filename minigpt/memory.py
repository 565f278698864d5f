"""What a training step holds in memory, estimated before anything is allocated, and the refusal when it cannot fit.

A first estimate, kept simple (the full memory plan of large models builds on it):

    weights    5 P     parameters, gradients, AdamW's m and v (FlatAdamW's four flat buffers), and the
                       model's own parameters until FlatAdamW has copied them in
    activations, per micro-batch of B rows of T tokens, what each layer keeps for its backward:
               per block   B T (18 C + H T)     its inputs, LayerNorm outputs, q k v, the attention
                                                probabilities (H T per token), the MLP's 4C-wide input
                                                and output, residuals
               backward    one block more       the gradients of the block being differentiated
               the head    2 B T V              the logits and their gradient
               embeddings  B T C

in elements of `dtype` (4 bytes for float32). Gradient accumulation does not
add to it (one micro-batch at a time), nor do the worker threads (they split the
B rows). The attention term is quadratic in T: it is what makes a long
--block_size impossible long before the corpus runs out.

Against the peak RSS of two float32 training steps on one worker (2026-12-05, AMD
EPYC, n_layer x n_embd, 4 heads, a character vocabulary), estimated / measured MiB: B=8 T=512
4x256: 588 / 499; B=16 T=1024 2x128: 1,221 / 839; B=32 T=256 6x384: 1,954 / 1,757;
B=1 T=4096 1x16: 523 / 283. It errs high (1.1x to 1.9x, most for one layer with a
long context), so that a run it lets through does not then run out of memory.

`check_step_memory` compares this with the memory available now (Linux's
MemAvailable; the GPU's free memory) and stops in one line that says what
would fit: the largest --batch_size, or the largest --block_size at batch 1.
"""

import dataclasses
import math
import os
from typing import NamedTuple

from minigpt.backend import get_xp
from minigpt.errors import MinigptError
from minigpt.model_config import param_shapes

WEIGHT_COPIES = 5  # parameters, gradients, m, v, and the model's own parameters until FlatAdamW copies them


class StepBytes(NamedTuple):
    weights: int  # parameters, gradients, AdamW's moments
    activations: int  # what one micro-batch's forward keeps for its backward

    @property
    def total(self) -> int:
        return self.weights + self.activations


def estimate_step_bytes(config, batch_size: int, block_size: int, dtype="float32") -> StepBytes:
    """Bytes a training step of model `config` holds at `batch_size` rows of `block_size` tokens (see the module doc).

    `config` is a GPTConfig (its vocab_size and shape; its block_size sizes wpe).
    """
    itemsize = 8 if str(dtype) == "float64" else 4
    P = sum(math.prod(shape) for shape in param_shapes(config).values())
    B, T, C, H, V = batch_size, block_size, config.n_embd, config.n_head, config.vocab_size
    per_block = B * T * (18 * C + H * T)
    activations = (config.n_layer + 1) * per_block + 2 * B * T * V + B * T * C
    return StepBytes(WEIGHT_COPIES * P * itemsize, activations * itemsize)


def available_bytes(device: str = "cpu") -> int | None:
    """Memory a new allocation can take now: MemAvailable on the host, the free memory of the GPU; None if unknown."""
    if device == "gpu":
        try:
            return int(get_xp("gpu").cuda.runtime.memGetInfo()[0])
        except Exception:  # noqa: BLE001 -- no CuPy runtime to ask (a stand-in): no check
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:,.0f} MiB"


def check_step_memory(config, batch_size: int, block_size: int, dtype="float32", device="cpu", ranks: int = 1,
                      available: int | None = None) -> StepBytes:
    """Stop with one line when a training step cannot fit in the memory available; else its estimate.

    With `ranks` processes (mpiexec -n N) each holds ceil(batch_size / ranks) of the rows.
    """
    rows = -(-batch_size // ranks)
    need = estimate_step_bytes(config, rows, block_size, dtype)
    available = available_bytes(device) if available is None else available
    if available is None or need.total <= available:
        return need
    where = "GPU memory is free" if device == "gpu" else "memory is available"
    raise MinigptError(
        f"a training step at --batch_size {batch_size} --block_size {block_size} needs about {gib(need.total)} "
        f"({gib(need.weights)} for the weights, gradients and AdamW moments, {gib(need.activations)} of activations)"
        f"{f' on each of {ranks} ranks' if ranks > 1 else ''} but only {gib(available)} of {where}; "
        f"{what_fits(config, rows, block_size, dtype, available, ranks)}"
    )


def what_fits(config, rows: int, block_size: int, dtype, available: int, ranks: int = 1) -> str:
    """The largest --batch_size that fits, else the largest --block_size at batch 1, else that the model does not."""
    one_row = estimate_step_bytes(config, 1, block_size, dtype)
    if one_row.total <= available:  # activations grow linearly in B
        largest = (available - one_row.weights) // max(one_row.activations, 1)
        return (f"--batch_size {min(largest, rows - 1) * ranks} fits "
                f"(with --gradient_accumulation_steps to keep the tokens per step)")
    # the largest T with estimate(B=1, T) <= available, by bisection; a new model's position table
    # (wpe, block_size rows) shrinks with T too
    tied = config.block_size == block_size and config.position == "learned"
    low, high = 0, block_size
    while low < high:
        mid = (low + high + 1) // 2
        model = dataclasses.replace(config, block_size=mid) if tied else config
        if estimate_step_bytes(model, 1, mid, dtype).total <= available:
            low = mid
        else:
            high = mid - 1
    if low >= 1:
        return f"at --batch_size 1, --block_size {low} fits"
    return "the model alone does not fit: choose a smaller one (--n_layer, --n_embd) or a machine with more memory"

