"""Tokenize a corpus of any size into llm.c shards: data/<name>_<tokenizer>/{val_*.bin, train_*.bin, meta.json, tokenizer/}.

    python scripts/prepare_data.py --data fineweb.jsonl.gz --tokenizer gpt2
    python scripts/prepare_data.py --data my_texts/ --tokenizer bpe:4096 --num_proc 8
    python scripts/prepare_data.py --dataset shakespeare --tokenizer char --out data/shakespeare_shards

Input: a text file, a folder of them (recursive), .jsonl files with a `text`
field, any of them gzip-compressed. Documents are tokenized in --num_proc
processes and joined with the end-of-text token; the first --val_tokens tokens
are the validation shard(s). A killed run continues from its last complete
shard; running again on the same input does nothing. Train on the result with
`scripts/train.py --data data/<name>_<tokenizer>`. See docs/data.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from minigpt.cli import ArgumentParser  # noqa: E402
from minigpt.data import DATASETS, load_corpus  # noqa: E402
from minigpt.errors import run_cli  # noqa: E402
from minigpt.preparation import prepare_shards  # noqa: E402


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_option("--dataset", "--data-set", default="pydoc", help=f"one of {', '.join(DATASETS)}")
    parser.add_option("--data", metavar="PATH",
                      help="a text or .jsonl file (maybe .gz) or a folder of them, used instead of --dataset")
    parser.add_option("--tokenizer", default="char",
                      help="char, gpt2, bpe:N, or a directory holding a tokenizer (a checkpoint, a GPT-2 directory)")
    parser.add_option("--out", metavar="DIR", default=None, help="output folder (default: data/<name>_<tokenizer>/)")
    parser.add_option("--num_proc", type=int, default=None, help="tokenizing processes (default: the cores)")
    parser.add_option("--shard_tokens", type=int, default=100_000_000, help="tokens per shard")
    parser.add_option("--val_tokens", type=int, default=None,
                      help="tokens of the validation split (default: a tenth of the corpus, at most 10M)")
    parser.add_option("--progress", choices=("true", "false"), default="true", help="show the progress bar")
    args = parser.parse_args(argv)
    corpus = load_corpus(args.dataset) if args.data is None else None
    out, meta = prepare_shards(args.data, args.tokenizer, out=args.out, num_proc=args.num_proc,
                               shard_tokens=args.shard_tokens, val_tokens=args.val_tokens,
                               progress=args.progress == "true", corpus=corpus)
    print(f"{meta['tokenizer_kind']} vocabulary of {meta['vocab_size']:,} ({meta['dtype']}); "
          f"train on it with: python scripts/train.py --data {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
