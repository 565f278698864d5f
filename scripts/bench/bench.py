"""Benchmark a full training step: forward, backward (with gradient accumulation), clipping and AdamW.

    python scripts/bench/bench.py                         # every shape, minigpt with its defaults
    python scripts/bench/bench.py --compare-torch         # also GPT2LMHeadModel + torch.optim.AdamW, side by side
    python scripts/bench/bench.py --compare-torch --torch-python /path/to/venv/bin/python   # torch lives elsewhere
    python scripts/bench/bench.py --workers 1             # one thread per step (default: one per core, as train.py)
    python scripts/bench/bench.py --ranks 2               # mpiexec -n 2: two processes share each step
    python scripts/bench/bench.py --compare-torch --torch-tuned-malloc   # PyTorch also with minigpt's malloc settings

Each shape and side runs in a fresh subprocess, so its peak resident memory
(`ru_maxrss`, everything the process touched: Python, the arrays, BLAS buffers)
is its own; the table also gives the peak of NumPy's buffers during one step
(tracemalloc). tokens/s is the median of --iters timed steps; MFU is against a
float32 matmul peak measured here. FLOPs per token: GPT.flops_per_token,
6 N + 6 n_layer n_embd T (N without position embeddings; attention counted for
its causal half). With --ranks, "collectives" is the share of a step that rank 0
spends in the communicator (waiting for the other ranks included).
"""

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import machine  # noqa: E402  (scripts/bench/machine.py, beside this script)
from minigpt.errors import MinigptError, run_cli  # noqa: E402

# name: (model, batch_size B, block T, gradient_accumulation_steps A); a step is A x B x T tokens
SHAPES = {
    # nanoGPT's CPU recipe (train.py's defaults, Tiny Shakespeare's 65 characters)
    "recipe-4x128": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65), 12, 64, 1),
    "char-6x384": (dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65), 8, 256, 1),
    "gpt2-width-2L": (dict(n_layer=2, n_head=12, n_embd=768, block_size=1024, vocab_size=50257), 4, 512, 1),
    # nanoGPT's fine-tuning recipe (batch 1, context 1024, accumulation) on the full GPT-2 124M
    "gpt2-124M-B1-accum4": (dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257), 1, 1024, 4),
}


def matmul_peak(n=2048, repeats=5):
    """float32 GFLOP/s of a large square matmul: the ceiling the model's matmuls can reach."""
    a = np.ones((n, n), dtype=np.float32)
    b = np.ones((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def time_steps(step, warmup, iters):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def traced_peak_mb(step):
    gc.collect()
    tracemalloc.start()
    step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def batches(shape):
    cfg, B, T, A = SHAPES[shape]
    rng = np.random.default_rng(0)
    return rng.integers(0, cfg["vocab_size"], (A, B, T)), rng.integers(0, cfg["vocab_size"], (A, B, T))


# -- the two sides, each run in its own process ------------------------------------------------


class TimedComm:
    """A communicator that adds up the seconds spent in its collectives."""

    def __init__(self, comm):
        self.comm, self.seconds = comm, 0.0

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def _timed(self, method, *args):
        t0 = time.perf_counter()
        result = getattr(self.comm, method)(*args)
        self.seconds += time.perf_counter() - t0
        return result

    def all_reduce(self, buf):
        return self._timed("all_reduce", buf)

    def reduce_scatter(self, buf, out):
        return self._timed("reduce_scatter", buf, out)

    def all_gather(self, shard, out):
        return self._timed("all_gather", shard, out)

    def sum_host(self, values):
        return self._timed("sum_host", values)


def child_minigpt(shape, workers, warmup, iters):
    from minigpt.backend import scalar
    from minigpt.host_memory import tune_host_allocator
    from minigpt.distributed import world
    from minigpt.model import GPT, GPTConfig
    from minigpt.optim import FlatAdamW
    from minigpt.parallel import DataParallel

    tune_host_allocator()  # the host allocator settings train.py runs with
    comm = TimedComm(world())
    cfg, B, T, A = SHAPES[shape]
    model = GPT(GPTConfig(**cfg), seed=0).train()
    parallel = DataParallel(model, workers or None, comm)
    # as train.py (--zero true; one rank: plain), the update shared by the worker threads
    opt = FlatAdamW(model.params, lr=1e-4, comm=comm, zero=True, threads=parallel.workers)
    source = batches(shape)  # (X, Y): (A, B, T) inputs and targets

    def step():
        loss, grads = parallel.forward_backward(*source, into=opt.grad_views)  # as train.py
        opt.step(grads, lr=1e-4, grad_clip=1.0)
        return scalar(loss)

    for _ in range(warmup):
        step()
    comm.seconds, t0 = 0.0, time.perf_counter()
    seconds = time_steps(step, 0, iters)
    share = comm.seconds / (time.perf_counter() - t0)
    traced = traced_peak_mb(step)
    parallel.close()
    rss = comm.sum_host(np.eye(comm.world_size)[comm.rank] * max_rss_mb())  # every rank's peak
    return {"tokens_per_sec": A * B * T / seconds, "flops_per_token": model.flops_per_token(T), "traced_mb": traced,
            "rss_mb": float(rss.max()), "rss_total_mb": float(rss.sum()), "collective_share": share,
            "workers": parallel.workers, "ranks": comm.world_size}


def child_torch(shape, warmup, iters):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from minigpt.model import GPTConfig
    from minigpt.weights import config_to_hf

    cfg, B, T, A = SHAPES[shape]
    hf_config = GPT2Config.from_dict(config_to_hf(GPTConfig(**cfg)))  # dropout 0, as minigpt's side
    torch.manual_seed(0)
    model = GPT2LMHeadModel(hf_config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    idx, targets = (torch.from_numpy(a) for a in batches(shape))

    def step():
        for a in range(A):  # nanoGPT's accumulation: each micro-batch's loss / A, gradients add up in .grad
            logits = model(idx[a]).logits
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets[a].view(-1)) / A
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = time_steps(step, warmup, iters)
    return {"tokens_per_sec": A * B * T / seconds, "rss_mb": max_rss_mb(), "threads": torch.get_num_threads()}


# host_memory.tune_host_allocator's settings, for a process that cannot call mallopt itself (PyTorch's side)
TUNED_GLIBC = ("glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=18446744073709551615:"
               "glibc.malloc.top_pad=67108864")


def run_child(command, env=None):
    """Run one side of one shape in a fresh process; its JSON result."""
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise MinigptError(f"benchmark child failed: {' '.join(command)}\n{result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- the table ----------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--iters", type=int, default=5, help="timed steps per shape (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="threads per process sharing each step (0: one per core)")
    parser.add_argument("--ranks", type=int, default=1, help="processes sharing each step (mpiexec -n RANKS)")
    parser.add_argument("--compare-torch", action="store_true", help="also time transformers + torch.optim.AdamW")
    parser.add_argument("--torch-python", default=sys.executable, help="the Python that has torch and transformers")
    parser.add_argument("--torch-tuned-malloc", action="store_true",
                        help="also time PyTorch with minigpt's allocator settings (glibc tunables)")
    parser.add_argument("--child", choices=["minigpt", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 0 or args.ranks < 1:
        raise MinigptError(f"--workers must be 0 or more and --ranks 1 or more, got {args.workers} and {args.ranks}")
    if args.torch_tuned_malloc and not args.compare_torch:
        raise MinigptError("--torch-tuned-malloc times PyTorch a second way: add --compare-torch")

    if args.child == "minigpt":
        result = child_minigpt(args.shapes[0], args.workers, args.warmup, args.iters)
        if result["ranks"] == 1 or os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK")) == "0":
            print(json.dumps(result))
        return 0
    if args.child == "torch":
        print(json.dumps(child_torch(args.shapes[0], args.warmup, args.iters)))
        return 0

    print(machine.header(args.torch_python if args.compare_torch else None))  # its load: before this run's own
    peak = matmul_peak()
    print(f"# ranks={args.ranks}  workers={args.workers or 'one per core'}")
    print(f"# float32 matmul peak measured here: {peak:.1f} GFLOP/s")
    header = ("| shape | A x B x T | ranks x workers | minigpt tokens/s | MFU | peak RSS (MB) | step arrays (MB) "
              "| collectives |")
    if args.compare_torch:
        header += " PyTorch tokens/s | PyTorch peak RSS (MB) | minigpt / PyTorch |"
        if args.torch_tuned_malloc:
            header += " PyTorch, tuned malloc | minigpt / that |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    common = ["--iters", str(args.iters), "--warmup", str(args.warmup)]
    launcher = [] if args.ranks == 1 else [shutil.which("mpiexec") or "mpiexec", "-n", str(args.ranks)]
    for name in args.shapes:
        _, B, T, A = SHAPES[name]
        r = run_child([*launcher, sys.executable, __file__, "--child", "minigpt", "--shapes", name,
                       "--workers", str(args.workers), *common])
        mfu = r["tokens_per_sec"] * r["flops_per_token"] / (peak * 1e9)
        rss = f"{r['rss_mb']:,.0f}" + (f" per rank ({r['rss_total_mb']:,.0f} in all)" if r["ranks"] > 1 else "")
        share = f"{r['collective_share']:.1%}" if r["ranks"] > 1 else "-"
        row = (f"| {name} | {A} x {B} x {T} | {r['ranks']} x {r['workers']} | {r['tokens_per_sec']:,.0f} | {mfu:.1%} "
               f"| {rss} | {r['traced_mb']:,.0f} | {share} |")
        if args.compare_torch:
            t = run_child([args.torch_python, __file__, "--child", "torch", "--shapes", name, *common])
            row += f" {t['tokens_per_sec']:,.0f} | {t['rss_mb']:,.0f} | {r['tokens_per_sec'] / t['tokens_per_sec']:.2f}x |"
            if args.torch_tuned_malloc:
                env = dict(os.environ, GLIBC_TUNABLES=TUNED_GLIBC)
                t = run_child([args.torch_python, __file__, "--child", "torch", "--shapes", name, *common], env)
                row += f" {t['tokens_per_sec']:,.0f} | {r['tokens_per_sec'] / t['tokens_per_sec']:.2f}x |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
