"""Benchmark the tokenizers: GPT-2 encode throughput and BPE training time.

    MINIGPT_GPT2_TOKENIZER_DIR=../shared/data python scripts/bench/bench_tokenizer.py
    python scripts/bench/bench_tokenizer.py --text input.txt --gpt2 checkpoints/gpt2

Encodes the text (Tiny Shakespeare by default) with minigpt's GPT-2 tokenizer,
first with an empty per-word cache ("cold": what one encode of a fresh
tokenizer costs) and then again ("warm"), and, when installed, with tiktoken
and Hugging Face's GPT2Tokenizer, checking that all give the same ids. Then
trains a BPE of --vocab-size tokens on the text, and checks that Hugging Face's
GPT2Tokenizer loads the files `save` writes (GPT-2's and the trained one) and
gives the same ids. Not a test: timings depend on the machine.
"""

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import machine  # noqa: E402  (scripts/bench/machine.py, beside this script)
from minigpt.errors import MinigptError, run_cli  # noqa: E402
from minigpt.tokenizer import GPT2_SPLIT_PATTERN, BPETokenizer  # noqa: E402

ENV_VAR = "MINIGPT_GPT2_TOKENIZER_DIR"


def timed(function) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) of one call.

    On a shared machine the CPU time is the fairer number: it leaves out the
    time other processes held the core.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def best_time(function, repeats: int) -> tuple[float, float]:
    """The fastest (wall, CPU) seconds of `repeats` calls, each taken separately."""
    times = [timed(function) for _ in range(repeats)]
    return min(wall for wall, _ in times), min(cpu for _, cpu in times)


def load_gpt2(gpt2: str | None) -> BPETokenizer:
    """GPT-2's tokenizer from --gpt2, else the env var's directory, else `from_pretrained("gpt2")`."""
    source = gpt2 or os.environ.get(ENV_VAR) or "gpt2"
    return BPETokenizer.from_pretrained(source)


def tiktoken_gpt2(gpt2_dir: Path | None):
    """tiktoken's GPT-2 encoding built offline from gpt2.tiktoken, or None when unavailable."""
    try:
        import tiktoken
        import tiktoken.load
    except ImportError:
        return None
    if gpt2_dir is None or not (gpt2_dir / "gpt2.tiktoken").is_file():
        return None
    ranks = tiktoken.load.load_tiktoken_bpe(str(gpt2_dir / "gpt2.tiktoken"))
    return tiktoken.Encoding("gpt2-offline", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def hf_gpt2_tokenizer(directory: Path):
    """Hugging Face's GPT2Tokenizer reading vocab.json + merges.txt, or None without transformers."""
    try:
        from transformers import GPT2Tokenizer
    except ImportError:
        return None
    logging.getLogger("transformers").setLevel(logging.ERROR)  # "sequence longer than 1024"
    return GPT2Tokenizer.from_pretrained(str(directory))


def hf_kind(hf_tokenizer) -> str:
    """transformers 5 backs GPT2Tokenizer with the Rust `tokenizers`; older ones were pure Python."""
    return "Rust tokenizers backend" if hasattr(hf_tokenizer, "backend_tokenizer") else "pure Python"


def report_encode(name: str, n_bytes: int, seconds: tuple[float, float]) -> None:
    wall, cpu = seconds
    print(f"  {name:<44} {wall:7.3f} s {n_bytes / wall / 1e6:7.2f} MB/s   "
          f"CPU {cpu:7.3f} s {n_bytes / cpu / 1e6:7.2f} MB/s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", help="UTF-8 text file (default: tinyshakespeare.txt in $" + ENV_VAR + ")")
    parser.add_argument("--gpt2", help="directory with GPT-2's vocab.json + merges.txt or encoder.json + "
                                       "vocab.bpe (default: $" + ENV_VAR + ", else checkpoints/gpt2)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size for the training run")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the best is reported)")
    args = parser.parse_args(argv)

    env_dir = Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else None
    text_path = Path(args.text) if args.text else (env_dir / "tinyshakespeare.txt" if env_dir else None)
    if text_path is None or not text_path.is_file():
        raise MinigptError(f"no text to encode: pass --text FILE or set {ENV_VAR} to a directory "
                           f"holding tinyshakespeare.txt")
    text = text_path.read_text(encoding="utf-8")
    n_bytes = len(text.encode("utf-8"))
    gpt2_dir = Path(args.gpt2) if args.gpt2 else env_dir
    print(machine.header())
    print(f"text: {text_path} ({n_bytes:,} bytes)\n")

    print(f"GPT-2 encode (best of {args.repeats}; load average {os.getloadavg()[0]:.2f}):")
    tokenizer = load_gpt2(args.gpt2)
    reference_ids = None

    def encode_cold():
        nonlocal reference_ids
        fresh = load_gpt2(args.gpt2)  # loading is not timed: the per-word cache starts empty
        seconds = timed(lambda: fresh.encode(text))
        reference_ids = fresh.encode(text)
        return seconds

    cold = [encode_cold() for _ in range(args.repeats)]
    report_encode("minigpt, cold cache", n_bytes, (min(w for w, _ in cold), min(c for _, c in cold)))
    tokenizer.encode(text)
    report_encode("minigpt, warm cache", n_bytes, best_time(lambda: tokenizer.encode(text), args.repeats))
    print(f"  {len(reference_ids):,} tokens")

    tiktoken_encoding = tiktoken_gpt2(gpt2_dir)
    if tiktoken_encoding is not None:
        report_encode("tiktoken", n_bytes, best_time(lambda: tiktoken_encoding.encode_ordinary(text), args.repeats))
        assert tiktoken_encoding.encode_ordinary(text) == reference_ids, "tiktoken's ids differ"
    else:
        print("  tiktoken: not installed or no gpt2.tiktoken; skipped")

    with tempfile.TemporaryDirectory() as tmp:
        saved_gpt2 = Path(tmp) / "gpt2"
        tokenizer.save(saved_gpt2)
        hf = hf_gpt2_tokenizer(saved_gpt2)
        if hf is not None:
            report_encode(f"HF GPT2Tokenizer ({hf_kind(hf)})", n_bytes,
                          best_time(lambda: hf.encode(text), args.repeats))
            assert hf.encode(text) == reference_ids, "Hugging Face's ids differ"
            print("  HF GPT2Tokenizer loads minigpt's saved vocab.json + merges.txt: same ids")
        else:
            print("  HF GPT2Tokenizer: transformers not installed; skipped")

        print(f"\nBPE training, vocab {args.vocab_size}:")
        trained = None

        def train():
            nonlocal trained
            trained = BPETokenizer.train(text, args.vocab_size)

        wall, cpu = timed(train)
        trained_ids = trained.encode(text)
        print(f"  {wall:.2f} s (CPU {cpu:.2f} s); {len(trained_ids):,} tokens on the training text "
              f"({n_bytes / len(trained_ids):.2f} bytes per token)")
        saved_trained = Path(tmp) / "trained"
        trained.save(saved_trained)
        assert BPETokenizer.load(saved_trained).encode(text) == trained_ids, "reloaded ids differ"
        hf = hf_gpt2_tokenizer(saved_trained)
        if hf is not None:
            assert hf.encode(text) == trained_ids, "Hugging Face's ids differ on the trained tokenizer"
            print("  HF GPT2Tokenizer loads the trained vocab.json + merges.txt: same ids")


if __name__ == "__main__":
    run_cli(main)
