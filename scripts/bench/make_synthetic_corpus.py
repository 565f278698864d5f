"""Write a synthetic FineWeb-like corpus: `.jsonl.gz`, one {"text": ...} document per line, of about N GB of text.

    python scripts/bench/make_synthetic_corpus.py /tmp/synthetic.jsonl.gz --gigabytes 5

The text is random words from Tiny Shakespeare's vocabulary (or a built-in
list), in documents of 200-2000 words with sentences and paragraphs: enough
variety that tokenizing it is real work, and the size is what is asked.
Used by docs/data.md's memory measurement (delete the file afterwards).
"""

import argparse
import gzip
import json
import os
import re

import numpy as np


def vocabulary() -> list[str]:
    path = os.path.join(os.environ.get("MINIGPT_GPT2_TOKENIZER_DIR", ""), "tinyshakespeare.txt")
    if os.path.isfile(path):
        words = sorted(set(re.findall(r"[A-Za-z']+", open(path, encoding="utf-8").read())))
        if len(words) > 1000:
            return words
    return [f"w{i}" for i in range(5000)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--gigabytes", type=float, default=5.0, help="uncompressed text, in 10^9 bytes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    words = np.array(vocabulary())
    rng = np.random.default_rng(args.seed)
    target, written = int(args.gigabytes * 1e9), 0
    with gzip.open(args.path, "wt", encoding="utf-8", compresslevel=1) as f:
        while written < target:
            lines = []
            for _ in range(256):
                n = int(rng.integers(200, 2000))
                chosen = words[rng.integers(0, len(words), size=n)]
                text = " ".join(chosen.tolist())
                text = text.replace(" the ", ". The ").replace(" and ", ",\n\nand ")
                lines.append(json.dumps({"text": text, "id": written}) + "\n")
                written += len(text)
            f.write("".join(lines))
    print(f"wrote {args.path}: {written / 1e9:.2f} GB of text, {os.path.getsize(args.path) / 1e9:.2f} GB compressed")


if __name__ == "__main__":
    main()
