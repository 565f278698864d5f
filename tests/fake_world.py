"""An in-process world of N ranks for testing collective code without MPI: one thread per rank.

`FakeWorld(n).run(fn)` calls fn(comm) on n threads, comm being rank r's
`FakeCommunicator`, and returns the n results in rank order. The collectives
have the exact semantics of `minigpt.distributed.Communicator` (sums in rank
order 0, 1, ..., N-1) and check what MPI and NCCL would require: every rank
calls the same collective with the same sizes, buffers are 1-D and contiguous,
and send and receive buffers do not overlap. Each communicator counts its calls
by name and size in `calls`, so a test can assert how many collectives a step makes.
"""

import threading

import numpy as np


class FakeWorld:
    def __init__(self, world_size: int):
        self.world_size = world_size
        self._barrier = threading.Barrier(world_size, timeout=30)
        self._posted = [None] * world_size

    def run(self, fn):
        """[fn(comm_0), ..., fn(comm_{N-1})], each on its own thread; the first error is raised here."""
        results, errors = [None] * self.world_size, []

        def rank_main(rank):
            try:
                results[rank] = fn(FakeCommunicator(self, rank))
            except BaseException as err:  # noqa: BLE001 - handed to the test's thread below
                errors.append(err)
                self._barrier.abort()  # the other ranks stop waiting instead of hanging

        threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(self.world_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        if real or errors:
            raise (real or errors)[0]
        return results

    def exchange(self, rank: int, call: tuple, array):
        """Every rank posts (call, a copy of its array); all get the N posts in rank order."""
        self._posted[rank] = (call, np.array(array, copy=True))
        self._barrier.wait()
        posts = list(self._posted)
        self._barrier.wait()  # nobody posts the next call before everyone has read this one
        calls = {c for c, _ in posts}
        if len(calls) != 1:
            raise AssertionError(f"ranks disagree on the collective: {sorted(calls)}")
        return [a for _, a in posts]


class FakeCommunicator:
    """Rank `rank` of a FakeWorld: all_reduce, reduce_scatter and all_gather on NumPy arrays."""

    def __init__(self, world: FakeWorld, rank: int):
        self.world = world
        self.rank = rank
        self.world_size = world.world_size
        self.calls = []  # (collective, buffer size) per call, in order

    def all_reduce(self, buf) -> None:
        _check_flat(buf)
        self.calls.append(("all_reduce", buf.size))
        parts = self.world.exchange(self.rank, ("all_reduce", buf.size), buf)
        buf[...] = _sum_in_rank_order(parts)

    def sum_host(self, values):
        """The element-wise sum over the ranks of a small host array (minigpt.parallel's target counts)."""
        values = np.array(values, dtype=np.float64).ravel()
        return _sum_in_rank_order(self.world.exchange(self.rank, ("sum_host", values.size), values))

    def reduce_scatter(self, buf, out) -> None:
        _check_flat(buf, out)
        n = out.size
        if buf.size != self.world_size * n:
            raise AssertionError(f"reduce_scatter: buf has {buf.size} elements, not world_size * {n}")
        self.calls.append(("reduce_scatter", buf.size))
        parts = self.world.exchange(self.rank, ("reduce_scatter", buf.size), buf)
        r = self.rank
        out[...] = _sum_in_rank_order([p[r * n : (r + 1) * n] for p in parts])

    def all_gather(self, shard, out) -> None:
        _check_flat(shard, out)
        n = shard.size
        if out.size != self.world_size * n:
            raise AssertionError(f"all_gather: out has {out.size} elements, not world_size * {n}")
        self.calls.append(("all_gather", out.size))
        parts = self.world.exchange(self.rank, ("all_gather", out.size), shard)
        for r, part in enumerate(parts):
            out[r * n : (r + 1) * n] = part


def _check_flat(*arrays) -> None:
    for a in arrays:
        if a.ndim != 1 or not a.flags.c_contiguous:
            raise AssertionError(f"collectives take 1-D contiguous buffers, got shape {a.shape}")
    if len(arrays) == 2 and np.shares_memory(*arrays):
        raise AssertionError("send and receive buffers overlap (MPI forbids it without MPI_IN_PLACE)")


def _sum_in_rank_order(parts):
    total = parts[0].copy()
    for p in parts[1:]:
        total += p
    return total
