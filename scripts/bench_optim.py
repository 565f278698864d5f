"""Time one optimizer step: FlatAdamW (flat buffer, clipping folded in) against per-tensor AdamW + clip_grad_norm.

    python scripts/bench_optim.py [--device cpu|gpu] [--repeats 5] [--train-step]

Shapes: nanoGPT's CPU recipe (4x128), the 6x384 character model and GPT-2 124M, float32, random gradients
(clipping active). FlatAdamW's time includes packing the gradients into its
buffer; the pack is also timed alone. --train-step also times one forward +
backward of the character model (batch 8, T 256, DataParallel) to put the
optimizer's share in proportion. Prints the minimum and median of --repeats runs.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minigpt.backend import get_xp, scalar  # noqa: E402
from minigpt.errors import run_cli  # noqa: E402
from minigpt.model import GPT, GPTConfig  # noqa: E402
from minigpt.optim import AdamW, FlatAdamW, clip_grad_norm  # noqa: E402

SHAPES = {
    "recipe-4x128": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65),  # nanoGPT's CPU recipe
    "char-6x384": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65),
    "gpt2-124M": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
}


def timed(fn, repeats, sync):
    fn()  # warm-up: first-touch page faults, kernel compiles
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3, statistics.median(times) * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-step", action="store_true")
    args = parser.parse_args(argv)
    xp = get_xp(args.device)

    def sync(x):
        if x is not None and args.device == "gpu":
            scalar(x)  # waits for the step's kernels

    for label, config in SHAPES.items():
        model = GPT(GPTConfig(**config), dtype="float32", device=args.device, seed=0)
        rng = xp.random.default_rng(0)
        grads = {k: rng.standard_normal(p.shape, dtype=np.float32) for k, p in model.params.items()}
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
            best, median = timed(fn, args.repeats, sync)
            print(f"  {name:36s} min {best:8.1f} ms   median {median:8.1f} ms")
        if args.train_step and label == "char-6x384":
            from minigpt.parallel import DataParallel

            parallel = DataParallel(model)
            idx = xp.asarray(np.random.default_rng(0).integers(0, 65, size=(8, 256)))
            best, median = timed(lambda: parallel.forward_backward(idx, idx)[0], args.repeats, sync)
            print(f"  {'forward + backward (B=8, T=256)':36s} min {best:8.1f} ms   median {median:8.1f} ms")


if __name__ == "__main__":
    run_cli(main)
