"""How fast a training step could possibly be here: its matrix products alone, timed.

    python scripts/bench/ceiling.py --shapes gpt2-124M-B1-accum4
    python scripts/bench/ceiling.py --compare-torch --torch-python /path/to/venv/bin/python

A float32 training step of GPT-2 is mostly matrix products; everything else
(LayerNorm, GELU, softmax, the loss, AdamW) is extra time on top of them. This
runs exactly the products one step of a bench.py shape makes, with the
shapes and transposes minigpt's CPU path gives them (the linear layers,
attention's blocks of 128 query rows, the tied head), on contiguous operands
into buffers allocated once, and nothing else. Its tokens/s is a ceiling for any NumPy float32 step
with those FLOPs on this machine: minigpt's step cannot beat it, and neither
can another float32 implementation that does the same arithmetic.

The products run the two ways minigpt can spread a step over the cores:
"workers", one thread per core, each with single-threaded BLAS and its own
micro-batches (what DataParallel does whenever the step has at least as many
slices as cores), and "BLAS threads", one thread whose BLAS uses every core.
The better of the two is the ceiling. With --compare-torch, PyTorch's full
step (bench.py's) runs right after, so the three figures share one run.
"""

import argparse
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (scripts/bench/machine.py, beside this script)
from bench import SHAPES, run_child, time_steps  # noqa: E402
from minigpt.errors import MinigptError, run_cli  # noqa: E402
from minigpt.fast.attention import query_blocks  # noqa: E402


@dataclass(frozen=True)
class Product:
    """One matrix product out = a @ b, batched over `batch` independent pairs.

    a is (batch, m, k) and b is (batch, k, n); a_t / b_t say the operand is
    stored transposed (as the model passes W^T or k^T: a transposed view).
    """

    batch: int
    m: int
    k: int
    n: int
    a_t: bool = False
    b_t: bool = False

    @property
    def flops(self):
        return 2 * self.batch * self.m * self.k * self.n


def linear_products(N, fan_in, fan_out):
    """y = x @ W (forward), dx = dy @ W^T, dW = x^T @ dy (minigpt.nn.linear)."""
    return [Product(1, N, fan_in, fan_out),
            Product(1, N, fan_out, fan_in, b_t=True),
            Product(1, fan_in, N, fan_out, a_t=True)]


def attention_products(B, H, T, D):
    """minigpt.fast.attention's blocked path: per block of query rows s..e, the keys 0..e-1 only."""
    products = []
    for s, e in query_blocks(T):
        rows = e - s
        products += [
            Product(B * H, rows, D, e, b_t=True),  # a = q k^T
            Product(B * H, rows, e, D),  # y = p v
            Product(B * H, e, rows, D, a_t=True),  # dv = p^T dy
            Product(B * H, rows, D, e, b_t=True),  # dp = dy v^T
            Product(B * H, rows, e, D),  # dq = da k
            Product(B * H, e, rows, D, a_t=True),  # dk = da^T q
        ]
    return products


def step_products(config, B, T):
    """Every product of one micro-batch's forward and backward (GPT-2: tied head, MLP 4C)."""
    C, H, V, L = config["n_embd"], config["n_head"], config["vocab_size"], config["n_layer"]
    N = B * T
    per_layer = (linear_products(N, C, 3 * C) + attention_products(B, H, T, C // H) + linear_products(N, C, C)
                 + linear_products(N, C, 4 * C) + linear_products(N, 4 * C, C))
    head = [Product(1, N, C, V, b_t=True),  # logits = x wte^T
            Product(1, N, V, C),  # dx = dlogits wte
            Product(1, V, N, C, a_t=True)]  # dwte = dlogits^T x
    return per_layer * L + head


class Operands:
    """Each product's operands and output, allocated once and shared by the products of one shape.

    Random values: BLAS's speed does not depend on them. Sharing keeps the
    memory small and, if anything, the caches warmer than in a real step: the
    ceiling errs upwards.
    """

    def __init__(self, products, seed=0):
        rng = np.random.default_rng(seed)
        cache = {}

        def array(shape, transposed, role="in"):
            key = (role, shape, transposed)
            if key not in cache:  # products of one shape share their arrays, as layers share shapes
                stored = shape[:-2] + shape[-2:][::-1] if transposed else shape
                a = rng.standard_normal(stored, dtype=np.float32)
                cache[key] = a.swapaxes(-1, -2) if transposed else a
            return cache[key]

        self.items = []
        for p in products:
            a = array((p.batch, p.m, p.k), p.a_t)
            b = array((p.batch, p.k, p.n), p.b_t)
            out = array((p.batch, p.m, p.n), False, role="out")  # never an input: values stay finite
            self.items.append((a[0] if p.batch == 1 else a, b[0] if p.batch == 1 else b,
                               out[0] if p.batch == 1 else out))

    def run(self):
        for a, b, out in self.items:
            np.matmul(a, b, out=out)


def time_ceiling(shape, warmup, iters):
    """{"workers": tokens/s, "blas_threads": tokens/s, "flops_per_token": ...} for one shape."""
    from minigpt.backend import blas_threads

    config, B, T, A = SHAPES[shape]
    cores = os.cpu_count() or 1
    products = step_products(config, B, T)
    flops = sum(p.flops for p in products)
    tokens = A * B * T
    result = {"flops_per_token": flops / (B * T)}

    # one thread per core, each taking micro-batches in turn (worker w: w, w + cores, ...)
    workers = min(cores, A)
    per_worker = [Operands(products, seed=w) for w in range(workers)]
    counts = [len(range(w, A, workers)) for w in range(workers)]

    def worker_step():
        threads = [threading.Thread(target=lambda w=w: [per_worker[w].run() for _ in range(counts[w])])
                   for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    with blas_threads(max(1, cores // workers)):
        result["workers"] = tokens / time_steps(worker_step, warmup, iters)
    del per_worker

    # one thread, every core's BLAS, the micro-batches one after another
    single = Operands(products)
    with blas_threads(cores):
        result["blas_threads"] = tokens / time_steps(lambda: [single.run() for _ in range(A)], warmup, iters)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--iters", type=int, default=3, help="timed steps per shape (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compare-torch", action="store_true", help="also time bench.py's PyTorch step, right after")
    parser.add_argument("--minigpt", action="store_true", help="also time bench.py's minigpt step, right after")
    parser.add_argument("--torch-python", default=sys.executable, help="the Python that has torch and transformers")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        raise MinigptError(f"--iters must be 1 or more and --warmup 0 or more, got {args.iters} and {args.warmup}")

    bench = str(Path(__file__).resolve().parent / "bench.py")
    common = ["--iters", str(args.iters), "--warmup", str(args.warmup)]
    header = "| shape | FLOPs per token | matmuls alone, workers | matmuls alone, BLAS threads | ceiling |"
    if args.minigpt:
        header += " minigpt step | minigpt / ceiling |"
    if args.compare_torch:
        header += " PyTorch step | ceiling / PyTorch |"
    print(machine.header(args.torch_python if args.compare_torch else None))
    print("# tokens/s")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in args.shapes:
        r = time_ceiling(name, args.warmup, args.iters)
        ceiling = max(r["workers"], r["blas_threads"])
        row = (f"| {name} | {r['flops_per_token'] / 1e9:.3f} G | {r['workers']:,.0f} | {r['blas_threads']:,.0f} "
               f"| {ceiling:,.0f} |")
        if args.minigpt:
            m = run_child([sys.executable, bench, "--child", "minigpt", "--shapes", name, "--workers", "0", *common])
            row += f" {m['tokens_per_sec']:,.0f} | {m['tokens_per_sec'] / ceiling:.1%} |"
        if args.compare_torch:
            t = run_child([args.torch_python, bench, "--child", "torch", "--shapes", name, *common])
            row += f" {t['tokens_per_sec']:,.0f} | {ceiling / t['tokens_per_sec']:.2f}x |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
