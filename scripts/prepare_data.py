"""Tokenize a corpus into data/<name>/{train.bin, val.bin, meta.json, tokenizer/} ahead of training.

    python scripts/prepare_data.py                                  # pydoc text, characters
    python scripts/prepare_data.py --dataset shakespeare --tokenizer gpt2
    python scripts/prepare_data.py --data my_texts/ --tokenizer bpe:4096

scripts/train.py does the same on first use; prepared data is reused while its
meta.json matches (same text, same tokenizer) and rebuilt otherwise.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from minigpt.cli import ArgumentParser  # noqa: E402
from minigpt.data import DATASETS, load_corpus, prepare  # noqa: E402
from minigpt.errors import run_cli  # noqa: E402


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_option("--dataset", "--data-set", default="pydoc", help=f"one of {', '.join(DATASETS)}")
    parser.add_option("--data", metavar="PATH",
                      help="a UTF-8 text file or a directory of them, used instead of --dataset (default: none)")
    parser.add_option("--tokenizer", default="char", help="char, gpt2 or bpe:N")
    args = parser.parse_args(argv)
    data = prepare(load_corpus(args.dataset, args.data), args.tokenizer)
    meta = data.meta
    print(f"{data.dir}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens, "
          f"{meta['tokenizer_kind']} vocabulary of {meta['vocab_size']:,} ({meta['dtype']})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
