"""Activation recomputation (`--recompute`): keep each block's input, run the block again in the backward.

A training forward normally keeps every layer's cache until the backward uses
it: per block about 34 B T C numbers plus the attention probabilities,
B H T^2 of them (GPT-2 at T = 1024: ~0.6 GB per block in float32). With
recompute the forward keeps only each block's input x_i (B T C numbers), and
the backward, reaching block i, runs `block.forward(x_i)` again to rebuild that
one block's cache, uses it, and lets it go. Memory: n_layer inputs plus one
block's cache instead of n_layer caches. Time: one more forward of the blocks,
about a third more compute (a forward is ~1/3 of forward + backward).

Why it is exact. A block's forward is a fixed sequence of array operations
on (its input, its parameters, its dropout masks). The input is kept
unchanged (every block writes a new array for its output), the parameters do
not change between a step's forward and backward, and the masks are replayed:
the forward records a copy of the dropout generator as it stood when the block
began (`fork_rng`), and the second run draws from that copy the very numbers
the first run drew. The same operations on the same bits in the same order
give the same bits, so the cache, and with it every gradient, equals the
one kept without recompute (tests/test_recompute.py: assert_array_equal).
"""

import copy
from typing import Any, NamedTuple

import numpy as np

from minigpt.errors import MinigptError


class Checkpoint(NamedTuple):
    """What the forward keeps of a block under recompute: its input and its dropout streams' state."""

    x: Any  # (B, T, C): the block's input, never written to afterwards
    rng: Any  # a copy of the dropout generator at the block's start, or None when no mask is drawn


def fork_rng(rng, draws: bool):
    """An independent copy of `rng` in its current state (None when the forward draws no masks).

    numpy's Generator copies its bit generator's state; minigpt.parallel's
    RowRNG (per-row streams, counter-based on a GPU) has its own `fork`.
    CuPy's cuRAND generator keeps no state that can be copied.
    """
    if not draws:
        return None
    if hasattr(rng, "fork"):
        return rng.fork()
    if isinstance(rng, np.random.Generator):
        return copy.deepcopy(rng)
    raise MinigptError("--recompute with dropout needs dropout streams that can be replayed: train through "
                       "minigpt.parallel.DataParallel (train.py does), or set --dropout 0")
