"""Time one optimizer step: FlatAdamW (flat buffer, clipping folded in) against per-tensor AdamW + clip_grad_norm.

    python scripts/bench/bench_optim.py [--device cpu|gpu] [--repeats 10] [--train-step]
    mpiexec -n 2 python scripts/bench/bench_optim.py --mpi      # all-reduce against ZeRO-1 over the ranks

Shapes: nanoGPT's CPU recipe (4x128), the 6x384 character model and GPT-2 124M,
float32, random gradients (clipping active). FlatAdamW's time includes packing
the gradients into its buffer; the pack is also timed alone. --train-step also
times one forward + backward of the character model (batch 8, T 256,
DataParallel) to put the optimizer's share in proportion. --mpi (CPU, needs
mpi4py) times FlatAdamW.step on every rank with zero=False and zero=True and the
time spent inside the collectives. Prints the minimum and median of --repeats runs.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import machine  # noqa: E402  (scripts/bench/machine.py, beside this script)
from minigpt.backend import get_xp, scalar  # noqa: E402
from minigpt.errors import run_cli  # noqa: E402
from minigpt.model import GPT, GPTConfig  # noqa: E402
from minigpt.optim import AdamW, FlatAdamW, clip_grad_norm  # noqa: E402

SHAPES = {
    "recipe-4x128": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65),  # nanoGPT's CPU recipe
    "char-6x384": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65),
    "gpt2-124M": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
}


class TimedMPI:
    """The three collectives FlatAdamW uses, over mpi4py's COMM_WORLD, adding up the seconds spent in them."""

    def __init__(self):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        self.seconds = 0.0

    def _timed(self, call, *args, **kwargs):
        t0 = time.perf_counter()
        call(*args, **kwargs)
        self.seconds += time.perf_counter() - t0

    def all_reduce(self, buf):
        self._timed(self.comm.Allreduce, self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def reduce_scatter(self, buf, out):
        self._timed(self.comm.Reduce_scatter_block, buf, out, op=self.MPI.SUM)

    def all_gather(self, shard, out):
        self._timed(self.comm.Allgather, shard, out)


def timed(fn, repeats, sync, before=lambda: None):
    fn()  # warm-up: first-touch page faults, kernel compiles
    times = []
    for _ in range(repeats):
        before()
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3, statistics.median(times) * 1e3


def line(name, best, median, extra=""):
    return f"  {name:36s} min {best:8.1f} ms   median {median:8.1f} ms{extra}"


def bench_one_process(label, model, grads, args, sync, xp):
    per_tensor = AdamW({k: p.copy() for k, p in model.params.items()})
    flat = FlatAdamW({k: p.copy() for k, p in model.params.items()})

    def per_tensor_step():
        norm = clip_grad_norm(grads, 1.0)
        per_tensor.step(grads, lr=1e-4)
        return norm

    def pack():
        for name, view in flat.grad_views.items():
            view[...] = grads[name]
        return flat.flat_grads[:1]

    print(f"{label}: {flat.numel:,} parameters, {len(grads)} tensors, float32, {args.device}")
    for name, fn in [("per-tensor AdamW + clip_grad_norm", per_tensor_step),
                     ("FlatAdamW.step (pack included)", lambda: flat.step(grads, lr=1e-4, grad_clip=1.0)),
                     ("  of which the pack", pack)]:
        print(line(name, *timed(fn, args.repeats, sync)))
    if args.train_step and label == "char-6x384":
        from minigpt.parallel import DataParallel

        parallel = DataParallel(model)
        idx = np.random.default_rng(0).integers(0, 65, size=(8, 256))  # host tokens, as the trainer hands them down

        def forward_backward():
            return parallel.forward_backward(idx, idx)[0]

        print(line("forward + backward (B=8, T=256)", *timed(forward_backward, args.repeats, sync)))


def bench_ranks(label, model, grads, args, comm):
    if comm.rank == 0:
        print(f"{label}: {model.num_params():,} parameters, float32, {comm.world_size} MPI ranks")
    for zero in (False, True):
        opt = FlatAdamW({k: p.copy() for k, p in model.params.items()}, comm=comm, zero=zero)
        seconds = []

        def start():
            comm.comm.Barrier()  # every rank starts together: the time waiting for a late rank is not counted
            seconds.append(comm.seconds)

        best, median = timed(lambda: opt.step(grads, lr=1e-4, grad_clip=1.0), args.repeats, lambda _: None, start)
        seconds.append(comm.seconds)
        in_collectives = statistics.median(np.diff(seconds)) * 1e3  # per step; seconds[0] is after the warm-up
        if comm.rank == 0:
            name = f"zero={zero}: m and v {2 * opt.m.nbytes / 2**20:.0f} MiB/rank"
            print(line(name, best, median, f"   collectives median {in_collectives:6.1f} ms"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--train-step", action="store_true")
    parser.add_argument("--mpi", action="store_true")
    args = parser.parse_args(argv)
    xp = get_xp(args.device)
    comm = TimedMPI() if args.mpi else None
    if comm is None or comm.rank == 0:
        print(machine.header())

    def sync(x):
        if x is not None and args.device == "gpu":
            scalar(x)  # waits for the step's kernels

    for label, config in SHAPES.items():
        model = GPT(GPTConfig(**config), dtype="float32", device=args.device, seed=0)
        rng = xp.random.default_rng(0 if comm is None else comm.rank)
        grads = {k: rng.standard_normal(p.shape, dtype=np.float32) for k, p in model.params.items()}
        if comm is None:
            bench_one_process(label, model, grads, args, sync, xp)
        else:
            bench_ranks(label, model, grads, args, comm)


if __name__ == "__main__":
    run_cli(main)
