"""Which windows of the training tokens each step reads: `--sampling random` or `--sampling shuffle`.

Both samplers hand out a step's micro-batches in order, B windows of T + 1
tokens at a time (`batch()`), the same windows on every rank; minigpt.parallel
deals the rows of each micro-batch out to ranks and worker threads, so the parts
never overlap.

random   B start positions drawn uniformly with replacement from one seeded
         generator (nanoGPT's get_batch, minigpt.data.get_batch): a window may
         come twice before another comes once.
shuffle  without replacement: the split is cut into non-overlapping windows
         (window k of a shard starts at token k T), each epoch is a permutation
         of all of them seeded by (seed, epoch), and the batches walk through it.
         An epoch that ends inside a batch finishes it with the next epoch's
         first windows. The position (epoch, cursor) is the whole state, so a
         resumed run reads exactly the windows it would have read, whatever the
         number of ranks or workers (the global batch is the same).

`epochs` counts the passes over the training split so far (fractional): for
shuffle the windows consumed / windows per epoch, for random the tokens drawn /
tokens in the split.
"""

import numpy as np

from minigpt.data import get_batch
from minigpt.errors import MinigptError
from minigpt.shards import TokenShards

SAMPLINGS = ("random", "shuffle")


def make_sampler(kind: str, tokens, batch_size: int, block_size: int, seed: int):
    """The sampler `--sampling kind` names, over the training split `tokens` (an array or TokenShards)."""
    if kind == "random":
        return RandomSampler(tokens, batch_size, block_size, seed)
    if kind == "shuffle":
        return ShuffleSampler(tokens, batch_size, block_size, seed)
    raise MinigptError(f"unknown --sampling {kind!r}: use {' or '.join(SAMPLINGS)}")


class RandomSampler:
    """Today's batches: get_batch from one generator seeded by `seed` (so existing runs draw what they drew)."""

    def __init__(self, tokens, batch_size, block_size, seed):
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.rng = np.random.default_rng(seed)
        self.windows_drawn = 0

    def batch(self, rows=None):
        self.windows_drawn += self.batch_size
        return get_batch(self.tokens, self.batch_size, self.block_size, self.rng, rows)

    @property
    def epochs(self) -> float:
        return self.windows_drawn * self.block_size / len(self.tokens)

    def state_dict(self) -> dict:
        return {"kind": "random", "rng": self.rng.bit_generator.state, "windows_drawn": self.windows_drawn}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind", "random") != "random":
            raise MinigptError(f"the checkpoint was trained with --sampling {state['kind']}; resume with that")
        if state.get("rng"):
            self.rng.bit_generator.state = state["rng"]
        self.windows_drawn = int(state.get("windows_drawn", 0))


class ShuffleSampler:
    """Every non-overlapping window once per epoch, in a permutation seeded by (seed, epoch)."""

    def __init__(self, tokens, batch_size, block_size, seed):
        self.tokens = tokens if isinstance(tokens, TokenShards) else TokenShards([tokens])
        self.batch_size, self.block_size, self.seed = batch_size, block_size, seed
        self.n_windows = int(self.tokens.window_counts(block_size).sum())
        if self.n_windows == 0:
            raise MinigptError(f"the training split has no window of block_size + 1 = {block_size + 1} tokens")
        self.epoch, self.cursor = 0, 0
        self._order = (None, None)  # (epoch, its permutation), computed once per epoch

    def order(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s permutation of the window numbers 0..n_windows-1."""
        if self._order[0] != epoch:  # int32 when it fits: 4 bytes a window (40 MB for 10B tokens at T = 1024)
            order = np.arange(self.n_windows, dtype=np.int32 if self.n_windows < 2**31 else np.int64)
            np.random.default_rng([self.seed, epoch]).shuffle(order)
            self._order = (epoch, order)
        return self._order[1]

    def next_indices(self, count: int) -> np.ndarray:
        """The next `count` window numbers, continuing into the next epoch when this one runs out."""
        parts = []
        while count:
            take = min(count, self.n_windows - self.cursor)
            parts.append(self.order(self.epoch)[self.cursor:self.cursor + take])
            self.cursor += take
            count -= take
            if self.cursor == self.n_windows:
                self.epoch, self.cursor = self.epoch + 1, 0
        return np.concatenate(parts)

    def batch(self, rows=None):
        indices = self.next_indices(self.batch_size)
        if rows is not None:
            indices = indices[rows]
        windows = self.tokens.windows(indices, self.block_size)
        return windows[:, :-1], windows[:, 1:]

    @property
    def epochs(self) -> float:
        return self.epoch + self.cursor / self.n_windows

    def state_dict(self) -> dict:
        return {"kind": "shuffle", "epoch": self.epoch, "cursor": self.cursor, "n_windows": self.n_windows}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "shuffle":
            raise MinigptError("the checkpoint was trained with --sampling random; resume with --sampling random")
        if state.get("n_windows") != self.n_windows:
            raise MinigptError(f"the checkpoint's epochs have {state.get('n_windows')} windows but this data and "
                               f"block size give {self.n_windows}: resume on the data it was trained on")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
