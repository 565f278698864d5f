"""Benchmark: minigpt's KV-cache generation against Hugging Face transformers on the same weights.

GPT-2 124M shapes with random weights (transformers' own init), written once in
Hugging Face format and loaded by both. Greedy decoding of a 32-token prompt,
64 new tokens, batch 1 (then batch 8), both in this process, the same number of
threads. Reports tokens/s (new tokens over the whole generate call, prefill
included; best of --repeats rounds, the two taking turns) and whether both produced the same tokens.

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
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing


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
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}")
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
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads {threads}, "
          f"torch {torch.__version__}, numpy {np.__version__}")
    print(f"GPT-2 124M shapes, random weights; prompt {args.prompt_tokens} tokens, {args.new_tokens} new, greedy")

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
        print(f"B={batch_size}: transformers {new / t_hf:7.1f} tok/s ({t_hf:.3f} s)   minigpt {new / t_mg:7.1f} tok/s ({t_mg:.3f} s)"
              f"   speedup {t_hf / t_mg:.2f}x   same tokens: {same} ({agree:.1%} of new tokens agree)")


if __name__ == "__main__":
    main()
