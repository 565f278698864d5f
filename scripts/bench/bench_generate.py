"""Benchmark: minigpt's KV-cache generation against Hugging Face transformers on the same weights.

GPT-2 124M shapes with random weights (transformers' own init), written once in
Hugging Face format and loaded by both. Greedy decoding of a 32-token prompt,
64 new tokens, batch 1 (then batch 8), both in this process, the same number of
threads. Reports tokens/s (new tokens over the whole generate call, prefill
included; best of --repeats rounds, the two taking turns) and whether both produced the same tokens.

The gemv bound: at batch 1 each new token reads every weight matrix once, a
matrix-vector product each (the tied head's 50257 x 768 included), so a decoder
that reads float32 weights through numpy's BLAS cannot beat the rate at which
numpy streams them. The script times one pass of `x @ W` over matrices of the
model's exact shapes and layout (fresh ones, 0.5 GB for 124M: far more than the
caches, so each is read from memory, in order, as decoding reads them), best of
--repeats passes, with all of numpy's BLAS threads and with one (on a busy
machine a gemv split over threads can wait 10x longer for a core), and takes
the faster. Bound tokens/s = 1 / that time; the B=1 line gives minigpt's
tokens/s as a share of it (minigpt's figure includes the prompt's prefill,
which the bound leaves out). At batch B > 1 the same pass with B rows of x
(`x @ W`, `x @ wte^T`: the products a decoding step makes, nothing else) is
that batch's matmul bound, B new tokens per pass.

    python scripts/bench/bench_generate.py [--repeats 3] [--batch-sizes 1 8]
    OPENBLAS_NUM_THREADS=1 python scripts/bench/bench_generate.py      # both libraries on one thread

Needs torch and transformers (reference only: minigpt itself never imports them).

With --past-block-size, minigpt alone (no torch) generates 4 x block_size new
tokens on a small model (train.py's default shape, random weights), so the
window slides: the exact re-run of the whole window at every token
(window_shift=1, what generation did before the cache slid) against the
default shift of block_size // 2, taking turns, best of --repeats.

    python scripts/bench/bench_generate.py --past-block-size [--block-size 64] [--batch-sizes 1 8]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
import machine  # noqa: E402  (scripts/bench/machine.py, beside this script)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--past-block-size", action="store_true",
                        help="minigpt only: 4 x block_size new tokens, window_shift 1 against the default")
    parser.add_argument("--block-size", type=int, default=64, help="the small model's context (--past-block-size)")
    return parser.parse_args()


def interleaved_best_times(fns, repeats):
    """Smallest wall time of each function over `repeats` rounds, and each one's last result.

    The functions take turns within every round, so a burst of load from other
    processes slows both sides rather than one of them.
    """
    best, results = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            results[i] = fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best, results


def decode_gemvs(weight_shapes: dict) -> list:
    """The matrix-vector products of one decoding step at B=1, as (shape, head) pairs: the layers in order, then the head.

    `weight_shapes` is {name: shape} of the model's parameters (GPT.params).
    Every 2-D weight is read once per token: x @ W for the (in, out) linear
    layers, wte @ x for the tied head (logits = x @ wte^T). The position table
    (wpe) is only indexed, one row per token: not a product.
    """
    gemvs = [(tuple(shape), name.endswith(("wte.weight", "lm_head.weight")))
             for name, shape in weight_shapes.items() if len(shape) == 2 and not name.endswith("wpe.weight")]
    return sorted(gemvs, key=lambda gemv: gemv[1])  # stable: the head, listed first with wte, moves last


def gemv_bound(gemvs: list, repeats: int = 3, batch_size: int = 1) -> tuple:
    """({BLAS threads: seconds for one pass over all the products}, bytes read): numpy's float32 gemv rate here.

    Fresh matrices of the given shapes, each read once per pass in order (cold
    whenever the set is larger than the caches); the head's is read as W @ x,
    the others as x @ W, each the same BLAS call decoding makes. Best of `repeats`
    passes after one untimed pass (page faults, thread start-up), with all of
    numpy's BLAS threads and with one: on a busy machine a gemv split over
    threads waits for a core and can be 10x slower than one thread, and a
    decoder may run either way, so the bound is the faster of the two.
    batch_size > 1: x has that many rows (x @ W, and x @ W^T for the head, as
    minigpt's decoding step calls them): matrix-matrix products with a short side.
    """
    products = []  # (left, right, out)
    for (rows, cols), head in gemvs:
        W = np.full((rows, cols), 0.01, dtype=np.float32)
        if batch_size > 1:
            x = np.ones((batch_size, cols if head else rows), dtype=np.float32)
            products.append((x, W.T, np.empty((batch_size, rows), np.float32)) if head
                            else (x, W, np.empty((batch_size, cols), np.float32)))
            continue
        x = np.ones(cols if head else rows, dtype=np.float32)
        products.append((W, x, np.empty(rows, np.float32)) if head else (x, W, np.empty(cols, np.float32)))

    def one_pass():
        for left, right, out in products:
            np.matmul(left, right, out=out)

    seconds = {}
    for threads in dict.fromkeys([machine.numpy_blas()["threads"] or os.cpu_count(), 1]):
        with threadpool_limits(threads, user_api="blas"):
            one_pass()
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                one_pass()
                best = min(best, time.perf_counter() - start)
        seconds[threads] = best
    return seconds, sum(4 * rows * cols for (rows, cols), _ in gemvs)


def bench_past_block_size(args):
    """tokens/s of a generation 4 x block_size long: the window re-run at every token against the slide."""
    from minigpt.host_memory import tune_host_allocator
    from minigpt.config import TrainConfig
    from minigpt.model import GPT, GPTConfig

    tune_host_allocator()
    shape = TrainConfig()
    config = GPTConfig(n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd, block_size=args.block_size,
                       vocab_size=65)  # Shakespeare-char's vocabulary
    model = GPT(config, seed=0).eval()
    new_tokens = 4 * args.block_size
    print(machine.header())
    print(f"{config.n_layer} layers, {config.n_head} heads, n_embd {config.n_embd}, block_size {config.block_size}, "
          f"random weights; prompt {args.prompt_tokens} tokens, {new_tokens} new, greedy")
    rng = np.random.default_rng(0)
    for batch_size in args.batch_sizes:
        prompt = rng.integers(0, config.vocab_size, size=(batch_size, min(args.prompt_tokens, args.block_size)))
        runs = [lambda: model.generate(prompt, new_tokens, temperature=0, window_shift=1),
                lambda: model.generate(prompt, new_tokens, temperature=0)]
        (t_exact, t_slide), _ = interleaved_best_times(runs, args.repeats)
        new = batch_size * new_tokens
        print(f"B={batch_size}: window re-run every token {new / t_exact:8.1f} tok/s ({t_exact:.3f} s)   "
              f"slide by {config.block_size // 2} {new / t_slide:8.1f} tok/s ({t_slide:.3f} s)   "
              f"ratio {t_exact / t_slide:.2f}x")


def main():
    args = parse_args()
    if args.past_block_size:
        bench_past_block_size(args)
        return
    print(machine.header(sys.executable))  # torch runs in this process here
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from minigpt.host_memory import tune_host_allocator
    from minigpt.model import GPT

    tune_host_allocator()  # as training does

    # NumPy's OpenBLAS reads its thread count from the environment at import; give torch the same
    threads = int(os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or os.cpu_count())
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    reference = GPT2LMHeadModel(GPT2Config()).eval()  # 124M, random init
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        model = GPT.from_pretrained(directory)
    print(f"threads {threads} (both libraries); GPT-2 124M shapes, random weights; prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new, greedy")
    gemvs = decode_gemvs({name: w.shape for name, w in model.params.items()})
    seconds, weight_bytes = gemv_bound(gemvs, args.repeats)
    pass_seconds = min(seconds.values())
    rates = ", ".join(f"{weight_bytes / t / 1e9:.1f} GB/s on {n} BLAS thread{'s' * (n > 1)}" for n, t in seconds.items())
    print(f"gemv bound: numpy streams the weights ({weight_bytes / 1e6:,.0f} MB per token) at {rates}: "
          f"{1 / pass_seconds:.1f} tokens/s at B=1")
    bound_seconds = {1: pass_seconds}  # batch size -> seconds of one pass of its products
    for batch_size in args.batch_sizes:
        if batch_size > 1:
            bound_seconds[batch_size] = min(gemv_bound(gemvs, args.repeats, batch_size)[0].values())
            print(f"matmul bound at B={batch_size}: one pass of its ({batch_size}, in) @ W products "
                  f"{bound_seconds[batch_size] * 1e3:.1f} ms: {batch_size / bound_seconds[batch_size]:.1f} tokens/s")
    rng = np.random.default_rng(0)
    for batch_size in args.batch_sizes:
        prompt = rng.integers(0, 50257, size=(batch_size, args.prompt_tokens))
        prompt_t = torch.from_numpy(prompt)

        def run_transformers():
            with torch.inference_mode():
                return reference.generate(prompt_t, attention_mask=torch.ones_like(prompt_t), max_new_tokens=args.new_tokens,
                                          min_new_tokens=args.new_tokens, do_sample=False, use_cache=True,
                                          pad_token_id=50256).numpy()

        def run_minigpt():
            return model.generate(prompt, args.new_tokens, temperature=0)

        (t_hf, t_mg), (out_hf, out_mg) = interleaved_best_times([run_transformers, run_minigpt], args.repeats)
        new = batch_size * args.new_tokens
        same = np.array_equal(out_hf, out_mg)
        agree = (out_hf[:, args.prompt_tokens:] == out_mg[:, args.prompt_tokens:]).mean()
        bound = "gemv" if batch_size == 1 else "matmul"
        of_bound = f" ({new / t_mg * bound_seconds[batch_size] / batch_size:.0%} of the {bound} bound)"
        print(f"B={batch_size}: transformers {new / t_hf:7.1f} tok/s ({t_hf:.3f} s)   minigpt {new / t_mg:7.1f} tok/s "
              f"({t_mg:.3f} s){of_bound}   speedup {t_hf / t_mg:.2f}x   same tokens: {same} ({agree:.1%} of new tokens agree)")


if __name__ == "__main__":
    main()
