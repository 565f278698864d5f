"""Preparation speed: scripts/prepare_data.py's pipeline with 1 and 2 processes against tiktoken, in tokens/s.

    MINIGPT_GPT2_TOKENIZER_DIR=../shared/data python scripts/bench/bench_prepare.py [--rounds 3]

The documents are Tiny Shakespeare's paragraphs and the pydoc topics (real
English and code, ~1.6 MB), --copies times over (8: ~13 MB, 3.8M tokens, so
that the fixed costs of loading and saving the tokenizer are amortised as on a
real corpus; the repeats find words in our per-piece cache, as the words of a
large corpus do), written as one .jsonl; every measurement encodes all of them
with GPT-2's tokenizer:

    ours, N processes   prepare_shards(..., num_proc=N) end to end (reading, tokenizing, writing shards),
                        a fresh tokenizer (empty per-piece cache) in every process
    tiktoken            enc.encode_ordinary(doc) per document, one thread;
                        enc.encode_ordinary_batch(docs) (its thread pool, default 8 threads)

Rounds alternate the variants (A/B/C/D, A/B/C/D, ...) so that load from other
processes hits them alike; the best round of each is reported, with `uptime`'s
load, and the tokens per CPU-second (this process's threads and the pool's
workers), which other processes' load does not lower. Not a test: timings depend on the machine. docs/data.md quotes the results.
"""

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import machine  # noqa: E402  (scripts/bench/machine.py, beside this script)
from minigpt.data import pydoc_corpus  # noqa: E402
from minigpt.preparation import prepare_shards  # noqa: E402
from minigpt.tokenizer import GPT2_SPLIT_PATTERN, BPETokenizer  # noqa: E402


def documents(gpt2_dir: Path) -> list[str]:
    shakespeare = (gpt2_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")
    return [p for p in shakespeare.split("\n\n") if p.strip()] + [pydoc_corpus().text]


def tiktoken_encoding(gpt2_dir: Path):
    import tiktoken
    import tiktoken.load

    return tiktoken.Encoding("gpt2", pat_str=GPT2_SPLIT_PATTERN,
                             mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(gpt2_dir / "gpt2.tiktoken")),
                             special_tokens={"<|endoftext|>": 50256})


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children (the pool's workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copies", type=int, default=8)
    args = parser.parse_args()
    print(machine.header())
    gpt2_dir = Path(os.environ["MINIGPT_GPT2_TOKENIZER_DIR"]).resolve()
    docs = documents(gpt2_dir) * args.copies
    enc = tiktoken_encoding(gpt2_dir)
    expected = sum(len(enc.encode_ordinary(d)) + 1 for d in docs)  # + the end-of-text token of each
    ours = BPETokenizer.load(gpt2_dir)
    assert sum(len(ours.encode_ordinary(d)) + 1 for d in docs[:200]) == sum(len(enc.encode_ordinary(d)) + 1 for d in docs[:200])
    work = Path(tempfile.mkdtemp(prefix="bench_prepare-"))
    corpus = work / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")

    def prepare(num_proc):
        def run():
            out = work / f"out{num_proc}"
            shutil.rmtree(out, ignore_errors=True)
            _, meta = prepare_shards(corpus, str(gpt2_dir), out=out, num_proc=num_proc, val_tokens=10_000,
                                     progress=False)
            assert meta["train_tokens"] + meta["val_tokens"] == expected
        return run

    variants = {
        "ours, 1 process": prepare(1),
        "ours, 2 processes": prepare(2),
        "tiktoken encode_ordinary, 1 thread": lambda: [enc.encode_ordinary(d) for d in docs],
        "tiktoken encode_ordinary_batch": lambda: enc.encode_ordinary_batch(docs),
    }
    best = {name: float("inf") for name in variants}
    best_cpu = {name: float("inf") for name in variants}
    devnull = open(os.devnull, "w")
    for _ in range(args.rounds):
        for name, run in variants.items():
            stdout, sys.stdout = sys.stdout, devnull
            try:
                start, cpu = time.perf_counter(), cpu_seconds()
                run()
                best[name] = min(best[name], time.perf_counter() - start)
                best_cpu[name] = min(best_cpu[name], cpu_seconds() - cpu)
            finally:
                sys.stdout = stdout
    shutil.rmtree(work)
    print(f"load {os.getloadavg()[0]:.1f} at the end; {len(docs):,} documents, {expected:,} tokens; "
          f"best of {args.rounds} rounds")
    print(f"  {'':38s} {'tokens/s (wall)':>16s} {'tokens per CPU-second':>22s}")
    for name, seconds in best.items():
        print(f"  {name:38s} {expected / seconds:>16,.0f} {expected / best_cpu[name]:>22,.0f}")


if __name__ == "__main__":
    main()
