"""Benchmark a full training step: forward, backward, gradient clipping and AdamW.

    python scripts/bench/bench.py                    # both shapes, minigpt only
    python scripts/bench/bench.py --compare-torch    # also GPT2LMHeadModel + torch.optim.AdamW, same process
    python scripts/bench/bench.py --workers 1        # the batch on one thread (default: one per core, as train.py)

Reports tokens/s, model FLOPs utilisation against a float32 matmul peak measured
here, and the peak memory of the step's arrays (tracemalloc sees NumPy's buffers).
FLOPs per token: GPT.flops_per_token, 6 N + 6 n_layer n_embd T (N without
position embeddings; attention counted for its causal half).
"""

import argparse
import gc
import os
import platform
import sys
import time
import tracemalloc
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from minigpt.backend import get_xp, scalar, tune_host_allocator  # noqa: E402
from minigpt.errors import MinigptError, run_cli  # noqa: E402
from minigpt.model import GPT, GPTConfig  # noqa: E402
from minigpt.optim import AdamW, clip_grad_norm  # noqa: E402
from minigpt.parallel import DataParallel  # noqa: E402
from minigpt.weights import config_to_hf  # noqa: E402

SHAPES = {
    "char-6x384": (dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65), 8, 256),
    "gpt2-width-2L": (dict(n_layer=2, n_head=12, n_embd=768, block_size=1024, vocab_size=50257), 4, 512),
}


def matmul_peak(xp, n=2048, repeats=5):
    """float32 GFLOP/s of a large square matmul: the ceiling the model's matmuls can reach."""
    a = xp.ones((n, n), dtype=np.float32)
    b = xp.ones((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        c = a @ b
        float(c[0, 0])  # a sync on the GPU
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def minigpt_step(parallel, opt, idx, targets):
    loss, grads = parallel.forward_backward(idx, targets)
    clip_grad_norm(grads, 1.0)
    opt.step(grads)
    return loss


def time_steps(step, warmup, iters):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def peak_memory_mb(step):
    gc.collect()
    tracemalloc.start()
    step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def bench_minigpt(name, device, warmup, iters, workers):
    cfg, B, T = SHAPES[name]
    config = GPTConfig(**cfg)
    model = GPT(config, device=device, seed=0).train()
    opt = AdamW(model.params, lr=1e-4)
    xp = get_xp(device)
    rng = np.random.default_rng(0)
    idx = xp.asarray(rng.integers(0, config.vocab_size, (B, T)))
    targets = xp.asarray(rng.integers(0, config.vocab_size, (B, T)))
    parallel = DataParallel(model, workers or None)
    step = lambda: scalar(minigpt_step(parallel, opt, idx, targets))  # noqa: E731 (scalar: a full sync)
    seconds = time_steps(step, warmup, iters)
    memory = peak_memory_mb(step) if device == "cpu" else float("nan")
    parallel.close()
    return model.flops_per_token(T), B * T / seconds, memory, parallel.workers


def bench_torch(name, warmup, iters):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg, B, T = SHAPES[name]
    hf_config = GPT2Config.from_dict(config_to_hf(GPTConfig(**cfg)))  # dropout 0, as minigpt's side
    torch.manual_seed(0)
    model = GPT2LMHeadModel(hf_config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(0)
    idx = torch.from_numpy(rng.integers(0, cfg["vocab_size"], (B, T)))
    targets = torch.from_numpy(rng.integers(0, cfg["vocab_size"], (B, T)))

    def step():
        logits = model(idx).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    return B * T / time_steps(step, warmup, iters)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--iters", type=int, default=5, help="timed steps per shape (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compare-torch", action="store_true", help="also time transformers + torch.optim.AdamW")
    parser.add_argument("--workers", type=int, default=None, help="threads sharing each batch (default 0: one per core)")
    args = parser.parse_args(argv)
    tune_host_allocator()  # as training does
    if args.workers is not None and args.workers < 0:
        raise MinigptError(f"--workers must be 0 (one per core) or more, got {args.workers}")

    peak = matmul_peak(get_xp(args.device))
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"# {date.today()}  {platform.processor() or platform.machine()}  {os.cpu_count()} cores  "
          f"threads={threads}  numpy {np.__version__}  device={args.device}")
    print(f"# float32 matmul peak measured here: {peak:.1f} GFLOP/s")
    header = "| shape | B x T | workers | minigpt tokens/s | MFU | peak memory (MB) |"
    if args.compare_torch:
        header += " PyTorch tokens/s | minigpt / PyTorch |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in args.shapes:
        flops_per_token, tps, memory, workers = bench_minigpt(name, args.device, args.warmup, args.iters, args.workers)
        _, B, T = SHAPES[name]
        mfu = tps * flops_per_token / (peak * 1e9)
        row = f"| {name} | {B} x {T} | {workers} | {tps:,.0f} | {mfu:.1%} | {memory:,.0f} |"
        if args.compare_torch:
            torch_tps = bench_torch(name, args.warmup, args.iters)
            row += f" {torch_tps:,.0f} | {tps / torch_tps:.2f}x |"
        print(row, flush=True)


if __name__ == "__main__":
    run_cli(main)
