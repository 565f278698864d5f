"""Data parallelism: the global batch of a step, cut into slices, spread over processes and threads.

One optimizer step reads A micro-batches (gradient_accumulation_steps) of B
rows (batch_size): the global batch. Its slices, each some rows of one
micro-batch, are dealt out to P = R x W parts: R ranks (processes, see
minigpt.distributed) times W worker threads in each (part p = r W + w).

The cut (`split_step`). Each micro-batch is cut into k = P / gcd(A, P) slices
of about B / k rows (at most B slices of one row), so that the A k slices are a
multiple of P and every part gets as many; slice i goes to part i mod P:

    A = 4, B = 1,  P = 2:   part 0 takes micro-batches 0 and 2, part 1 takes 1 and 3
    A = 1, B = 12, P = 2:   part 0 takes rows 0-5, part 1 rows 6-11
    A = 1, B = 1,  P = 2:   one slice, on one thread, with BLAS on every core

Why threads: NumPy runs every elementwise pass (GELU, softmax, LayerNorm) on
one core, and only the matmuls use them all; one worker per core, each with
single-threaded BLAS, keeps every core busy (NumPy and BLAS release the GIL).
Why processes: no GIL at all, and more machines than one.

The math. Micro-batch a has N_a valid targets (not -1), slice s of it N_s, and
the slice's forward returns loss_s, their mean. The step's loss is the mean
over micro-batches of each one's mean loss, so

    loss = 1/A sum_a sum_{s in a} N_s loss_s / N_a        dloss / dloss_s = N_s / (A N_a)

Each slice's backward starts from dloss_s = N_s / (A N_a) (N_a summed over the
ranks: one small host all-reduce), the gradients of the shared parameters add
up over the slices, and the sum over the ranks (the optimizer's one collective)
is the gradient of the global mean loss.

The order of the sums. Whichever worker finishes first, a rank adds its slices'
losses and gradients into one accumulator in the slices' order (micro-batch,
then row; `Accumulator`): with whole micro-batches per slice the sums are
bit for bit those of the sequential loop, whatever W. The gradients are added
layer by layer as each backward produces them, each tensor in its own turn, so
a rank holds one set of sums (the optimizer's flat gradient buffer itself, in
train.py) and the layers in flight: not a whole set per worker. A worker never
waits for another between its forward and its backward, and one that reaches a
tensor before its turn parks it (up to Accumulator.PARK_BYTES) and goes on. A run is
reproducible, and resumes exactly, for a given R and W; across R and W only
float rounding differs.

Dropout. Row j of micro-batch a at iteration `it` draws its masks from its own
stream, seeded by (seed, it, a, j): the masks depend neither on R, W nor on
where a run resumed (dropout's first axis is always the row). On a GPU the
streams are counter-based (minigpt.kernels.random_cuda), not a generator each.
"""

import collections
import copy
import functools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from minigpt.backend import blas_threads, get_xp, make_rng, to_device
from minigpt.data import check_token_ids
from minigpt.distributed import SingleProcess, cores_per_rank
from minigpt.errors import MinigptError
from minigpt.kernels.random_cuda import CounterRows
from minigpt.nn.cross_entropy import IGNORE_INDEX


def default_workers() -> int:
    """One worker per CPU core this rank may use (the machine's cores shared by the ranks on it)."""
    return cores_per_rank()


@dataclass(frozen=True)
class Slice:
    """Rows start .. stop-1 of micro-batch `micro`."""

    micro: int
    start: int
    stop: int


def split_step(n_micro: int, batch_size: int, parts: int) -> list[list[Slice]]:
    """The slices of each of `parts` parts, for a step of n_micro micro-batches of batch_size rows."""
    k = min(parts // math.gcd(n_micro, parts), batch_size)  # slices per micro-batch
    shares = [[] for _ in range(parts)]
    for i in range(n_micro * k):
        a, s = divmod(i, k)
        shares[i % parts].append(Slice(a, batch_size * s // k, batch_size * (s + 1) // k))
    return shares


class RowRNG:
    """Dropout's generator for a slice: row j's masks come from its own stream seeded by (*key, micro, j).

    On a GPU the streams are counter-based (minigpt.kernels.random_cuda): one launch per draw and no cuRAND
    generator made per row and step. COUNTER_BASED lists the devices that use them.
    """

    COUNTER_BASED = ("gpu",)

    def __init__(self, device, key, piece: Slice):
        seeds = [int(np.random.SeedSequence([*key, piece.micro, j]).generate_state(1, np.uint64)[0])
                 for j in range(piece.start, piece.stop)]
        self.xp = get_xp(device)
        self.counter_rows = CounterRows(seeds, self.xp) if device in self.COUNTER_BASED else None
        self.streams = [] if self.counter_rows is not None else [make_rng(device, seed) for seed in seeds]

    def fork(self) -> "RowRNG":
        """A copy whose streams stand where these do now: it draws the same numbers (minigpt.recompute)."""
        other = copy.copy(self)
        other.counter_rows = copy.copy(self.counter_rows)  # the seeds are shared, the counter is its own
        other.streams = [copy.deepcopy(stream) for stream in self.streams]
        return other

    def random(self, shape, dtype):
        """Uniform [0, 1) of `shape`, whose first axis is the slice's rows."""
        if self.counter_rows is not None:
            return self.counter_rows.random(shape, dtype)
        if shape[0] != len(self.streams):
            raise ValueError(f"dropout masks for {len(self.streams)} rows, asked for shape {shape}")
        out = self.xp.empty(shape, dtype=dtype)
        for row, stream in zip(out, self.streams):
            row[...] = stream.random(shape[1:], dtype=dtype)
        return out


class Accumulator:
    """A rank's loss and gradient sums, added in turn order (0, 1, 2, ...) whatever thread arrives first.

    Gradients arrive layer by layer (`GPT.backward(sink=accumulator.turn(t))`). Each tensor keeps its
    own turn. A worker whose turn has not come yet for a tensor leaves it
    parked and goes on with its backward: the thread that adds turn t - 1 adds
    the parked turn t right after (while the parked tensors stay under
    `park_bytes`; beyond it the worker waits for its turn). Each layer's
    gradients are freed as soon as they are added: a rank holds one set of sums
    plus the layers in flight, not one whole set of gradients per worker. The
    losses are kept per turn and summed in turn order when read, so no worker
    waits for another between its forward and its backward. `into` (name ->
    array, e.g. FlatAdamW's grad_views) receives the sums: turn 0 copies into
    it, later turns add; with no `into` the first gradients are kept as they are (no copy).
    """

    PARK_BYTES = 64 << 20  # gradients a worker may leave ahead of their turn (bounds the memory in flight)

    def __init__(self, into=None, park_bytes=PARK_BYTES):
        self.losses = {}  # turn -> that slice's weighted loss
        self.grads = {} if into is None else into
        self._keep_first = into is None
        self._turns = collections.Counter()  # name -> slices whose gradient of it has been added
        self._parked, self._parked_bytes, self.park_bytes = {}, 0, park_bytes  # (name, turn) -> gradient
        self.failed = False
        self._ready = threading.Condition()

    @property
    def loss(self):
        """The slices' losses summed in turn order (0.0 + loss_0 + loss_1 + ...): the same float whoever finished first."""
        return functools.reduce(lambda total, t: total + self.losses[t], sorted(self.losses), 0.0)

    def add_loss(self, turn: int, loss) -> None:
        self.losses[turn] = loss

    def add_grads(self, turn: int, grads: dict) -> None:
        """Add one layer's gradients (keyed like the model's params), each in its turn."""
        for name, g in grads.items():
            with self._ready:
                if self._turns[name] != turn and self._parked_bytes + g.nbytes <= self.park_bytes:
                    self._parked[name, turn] = g  # the thread that adds turn - 1 adds it
                    self._parked_bytes += g.nbytes
                    continue
                self._wait(lambda: self._turns[name] == turn)
            self._add_in_turn(name, turn, g)

    def _add_in_turn(self, name, turn, g) -> None:
        """Add g, whose turn has come (only this thread holds it), then any parked gradients of the next turns."""
        while g is not None:
            # outside the lock: the add runs beside other tensors' adds
            if turn > 0:
                self.grads[name] += g
            elif self._keep_first:
                self.grads[name] = g
            else:
                self.grads[name][...] = g
            with self._ready:
                self._turns[name] += 1
                turn += 1
                g = self._parked.pop((name, turn), None)
                if g is not None:
                    self._parked_bytes -= g.nbytes
                self._ready.notify_all()

    def turn(self, turn: int):
        """The sink of slice `turn`'s backward: it adds each layer's gradients in this turn."""
        return functools.partial(self.add_grads, turn)

    def _wait(self, ready) -> None:
        self._ready.wait_for(lambda: ready() or self.failed)
        if self.failed:
            raise RuntimeError("another worker thread failed")

    def fail(self) -> None:
        """A worker failed: wake the others, who would wait for its turn forever."""
        with self._ready:
            self.failed = True
            self._ready.notify_all()


class DataParallel:
    """Runs `model` over this rank's slices of each step on `workers` threads (CPU; one on a GPU).

    A step's tokens arrive as arrays, the same on every rank: inputs X and
    targets Y, (A, B, T) for A micro-batches of B rows (or (B, T), one
    micro-batch); each rank computes only its own slices of them.
    """

    def __init__(self, model, workers=None, comm=None):
        workers = default_workers() if workers is None else int(workers)
        if workers < 1:
            raise MinigptError(f"--workers must be at least 1 (or 0 in train.py: one per core), got {workers}")
        self.model = model
        self.comm = comm if comm is not None else SingleProcess()
        self.workers = 1 if model.device != "cpu" else workers
        self.cores = default_workers()
        self.replicas = [model.replica() for _ in range(self.workers)]
        self._pool = ThreadPoolExecutor(self.workers - 1) if self.workers > 1 else None
        self._plans = {}

    def describe(self) -> str:
        threads = f"{self.workers} worker thread{'s' if self.workers > 1 else ''}"
        return threads if self.comm.world_size == 1 else f"{self.comm.describe()} x {threads}"

    # -- the two jobs ---------------------------------------------------------------

    def forward_backward(self, X, Y, dropout_key=None, into=None):
        """(loss, grads) of one optimizer step on inputs X and targets Y ((A, B, T) or (B, T) host arrays):
        the global mean loss (the same on every rank) and this rank's share of its gradient (keyed like
        model.trainable: every parameter, or with LoRA the adapters; their sum over the ranks is the whole gradient).

        into: arrays (name -> array shaped like the parameter) to write the
        gradients into, e.g. FlatAdamW's grad_views, which then need no packing;
        grads is then `into` itself.
        """
        model = self.model
        if dropout_key is None and model.training and model.config.dropout:
            dropout_key = (int(model.rng.integers(0, 2**63)),)  # no key given: masks from the model's generator
        return self._run(X, Y, dropout_key, backward=True, into=into)

    def loss(self, X, Y):
        """The mean over X's batches ((n, B, T), or one (B, T)) of each one's mean loss, for evaluation
        (no gradients, no dropout)."""
        loss, _ = self._run(X, Y, None, backward=False)
        return loss

    # -- the slices ---------------------------------------------------------------------

    def _plan(self, n_micro, batch_size):
        """This rank's slices, per worker (made once per shape)."""
        key = (n_micro, batch_size)
        if key not in self._plans:
            W, rank = self.workers, self.comm.rank
            shares = split_step(n_micro, batch_size, self.comm.world_size * W)
            self._plans[key] = shares[rank * W:(rank + 1) * W]
        return self._plans[key]

    def _run(self, X, Y, dropout_key, backward, into=None):
        model = self.model
        X, Y = np.asarray(X), np.asarray(Y)
        if X.ndim == 2:  # one micro-batch
            X, Y = X[None], Y[None]
        check_token_ids(X, Y, model.config.vocab_size)  # on the host: a GPU would not catch a bad id
        n_micro, batch_size = X.shape[:2]
        plan = self._plan(n_micro, batch_size)
        mine = sorted((piece for share in plan for piece in share), key=lambda p: (p.micro, p.start))
        data = {p: (X[p.micro, p.start:p.stop], Y[p.micro, p.start:p.stop]) for p in mine}
        counts = {p: int((y != IGNORE_INDEX).sum()) for p, (_, y) in data.items()}
        n_valid = np.zeros(n_micro)
        for p, c in counts.items():
            n_valid[p.micro] += c
        n_valid = self.comm.sum_host(n_valid)  # every rank's targets count
        dropout = dropout_key is not None and model.training and model.config.dropout
        turns = {p: t for t, p in enumerate(p for p in mine if counts[p] or not n_valid[p.micro])}  # slice order
        jobs = []
        for replica, share in zip(self.replicas, plan):
            replica.training = model.training
            tasks = []
            for p in share:
                if p not in turns:
                    continue  # no valid target: the slice adds nothing to the loss or the gradients
                weight = (counts[p] / n_valid[p.micro] if n_valid[p.micro] else 1.0) / n_micro  # none anywhere: NaN
                rng = RowRNG(model.device, dropout_key, p) if dropout else None
                tasks.append((turns[p], *data[p], weight, rng))
            if tasks:
                jobs.append((replica, tasks, backward))
        total = Accumulator(into)
        self._in_threads(jobs, total)
        grads = None
        if backward:
            if not turns:  # no slice on this rank: it still takes part in the sum over ranks, with zeros
                for name, p in model.trainable.items():
                    total.grads.setdefault(name, model.xp.empty_like(p))[...] = 0
            grads = {name: total.grads[name] for name in model.trainable}  # the params' order (LoRA: the adapters')
        loss = self._sum_loss(total.loss) if self.comm.world_size > 1 else total.loss
        return loss, grads

    def _in_threads(self, jobs, total):
        """_work(*job, total) for every job, the first on this thread; BLAS threads share the cores out."""
        if not jobs:
            return
        with blas_threads(max(1, self.cores // len(jobs))):  # one busy worker gets every core's BLAS
            futures = [self._pool.submit(self._work, *job, total) for job in jobs[1:]]
            self._work(*jobs[0], total)
            for f in futures:
                f.result()

    def _work(self, replica, tasks, backward, total):
        """A worker's slices in order, each added to `total` in its turn."""
        device = self.model.device
        try:
            for turn, x, y, weight, rng in tasks:
                if rng is not None:
                    replica.rng = rng
                _, slice_loss = replica.forward(to_device(x, device), to_device(y, device), return_logits=False)
                total.add_loss(turn, slice_loss * weight)
                if backward:
                    replica.backward(dloss=weight, sink=total.turn(turn))  # each layer's gradients added as it ends
        except BaseException:
            total.fail()
            raise

    def _sum_loss(self, loss):
        """The loss summed over the ranks, on the model's device (no host sync on a GPU)."""
        xp = self.model.xp
        buf = xp.zeros(1, dtype=np.float64)
        buf[0] = loss
        self.comm.all_reduce(buf)
        return buf[0]

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
