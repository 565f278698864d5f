"""Data parallelism over CPU cores: each worker thread runs forward and backward on a slice of the batch.

Why: NumPy runs every elementwise pass (GELU, softmax, LayerNorm, the adds) on
one core, and only the matmuls use them all. Splitting the batch over one
worker per core, each with single-threaded BLAS, keeps every core busy for the
whole step. (llm.c spreads each layer's loop over the batch with OpenMP; nanoGPT
splits batches across GPUs with DDP, as here across cores.)
NumPy releases the GIL inside its loops and BLAS calls, so Python threads run
them in parallel.

The math. The batch of B sequences is cut along B into slices s = 1..S. The
loss is the mean over the N valid targets (those not -1); slice s holds N_s of
them and its own forward returns loss_s, their mean. So

    loss = sum_s N_s * loss_s / N        dloss / dloss_s = N_s / N

and each slice's backward starts from dloss_s = N_s / N; the gradients of the
parameters, which every slice shares, add up over the slices.

Each worker has a replica of the model (`GPT.replica`): the same parameter
arrays, its own activations and its own dropout generator. Those generators are
seeded from the model's own generator at every step, so a run is reproducible
(and resumable) for a given number of workers; with a different number the
dropout masks, and the float32 rounding of the sums, differ.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from minigpt.backend import blas_threads, make_rng
from minigpt.errors import MinigptError
from minigpt.nn.cross_entropy import IGNORE_INDEX


def default_workers() -> int:
    """One worker per CPU core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class DataParallel:
    """Runs `model` over slices of each batch on `workers` threads (CPU only; 1 worker: the model as it is)."""

    def __init__(self, model, workers=None):
        workers = default_workers() if workers is None else int(workers)
        if workers < 1:
            raise MinigptError(f"--workers must be at least 1 (or 0 in train.py: one per core), got {workers}")
        self.model = model
        self.workers = 1 if model.device != "cpu" else workers
        self._blas_threads = max(1, default_workers() // self.workers)  # per worker: the cores are shared out
        self.replicas = [model.replica() for _ in range(self.workers)] if self.workers > 1 else []
        self._pool = ThreadPoolExecutor(self.workers - 1) if self.workers > 1 else None

    def forward_backward(self, idx, targets):
        """The mean loss over the batch and the gradients of every parameter (keyed like model.params)."""
        if self.workers == 1:
            _, loss = self.model.forward(idx, targets)
            return loss, self.model.backward()
        results = self._run(idx, targets, self._slice_forward_backward)
        loss = sum(loss for loss, _ in results)
        grads = results[0][1]
        for _, other in results[1:]:
            for name, g in grads.items():
                g += other[name]
        return loss, grads

    def loss(self, idx, targets):
        """The mean loss over the batch, for evaluation (no gradients)."""
        if self.workers == 1:
            _, loss = self.model.forward(idx, targets)
            return loss
        return sum(self._run(idx, targets, self._slice_loss))

    # -- the slices ------------------------------------------------------------

    def _run(self, idx, targets, job):
        """job(replica, idx_s, targets_s, weight_s) on every slice, slice 0 on this thread; their results."""
        idx, targets = np.asarray(idx), np.asarray(targets)
        B, model = idx.shape[0], self.model
        S = min(self.workers, B)
        edges = [B * s // S for s in range(S + 1)]  # slice s is rows edges[s] .. edges[s+1]-1
        counts = [int((targets[a:b] != IGNORE_INDEX).sum()) for a, b in zip(edges, edges[1:])]
        n_valid = sum(counts)
        seeds = model.rng.integers(0, 2**63, size=S) if model.training and model.config.dropout else None
        tasks = []
        for s, (a, b) in enumerate(zip(edges, edges[1:])):
            if counts[s] == 0 and n_valid:
                continue  # no valid target: the slice adds nothing to the loss or the gradients
            replica = self.replicas[s]
            replica.training = model.training
            if seeds is not None:
                replica.rng = make_rng("cpu", int(seeds[s]))
            weight = counts[s] / n_valid if n_valid else 1.0  # no valid target anywhere: NaN, as without slices
            tasks.append((replica, idx[a:b], targets[a:b], weight))
        with blas_threads(self._blas_threads):
            futures = [self._pool.submit(job, *task) for task in tasks[1:]]
            first = job(*tasks[0])
            return [first] + [f.result() for f in futures]

    @staticmethod
    def _slice_forward_backward(replica, idx, targets, weight):
        _, loss = replica.forward(idx, targets)
        return loss * weight, replica.backward(dloss=weight)

    @staticmethod
    def _slice_loss(replica, idx, targets, weight):
        _, loss = replica.forward(idx, targets)
        return loss * weight

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
