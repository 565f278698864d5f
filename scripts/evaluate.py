"""Loss and perplexity of a model on a text file, over sliding windows of its context.

    python scripts/evaluate.py --checkpoint out --data data/my_text.txt
    python scripts/evaluate.py --checkpoint gpt2 --data valid.txt --stride 512

--checkpoint takes what scripts/generate.py takes (a checkpoint directory, a
training out_dir, a Hugging Face GPT-2 directory, or gpt2/gpt2-medium/...).
--stride (default: the block size, disjoint windows) below the block size gives
every scored token more context; see minigpt/perplexity.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from minigpt.cli import ArgumentParser, hyphenated  # noqa: E402
from minigpt.data import read_text_file  # noqa: E402
from minigpt.errors import run_cli  # noqa: E402
from minigpt.loading import load_checkpoint  # noqa: E402
from minigpt.perplexity import perplexity  # noqa: E402


def build_parser():
    parser = ArgumentParser(description="Loss and perplexity of a GPT model on a text file.")
    parser.add_option("--checkpoint", required=True,
                      help="checkpoint dir, training out_dir, Hugging Face GPT-2 dir, or gpt2/gpt2-medium/gpt2-large/gpt2-xl")
    parser.add_option("--data", required=True, help="a UTF-8 text file")
    parser.add_option("--stride", type=int, default=None, help="tokens between window starts (default: the block size)")
    parser.add_option("--batch-size", type=int, default=None,
                      help="windows per forward pass (default: 64, fewer when 64 windows' logits would pass 1 GiB)")
    parser.add_option("--device", default="cpu", choices=("cpu", "gpu"), help="cpu (NumPy) or gpu (CuPy)")
    return parser


LOGITS_BUDGET = 1 << 30  # bytes of float32 logits one forward pass may hold (GPT-2 small: 5 windows of 1024)


def default_batch_size(config) -> int:
    """64 windows per forward pass (4 took 12.3 s where 64 took 4.4 s, issue 23), capped so their logits fit LOGITS_BUDGET."""
    return max(1, min(64, LOGITS_BUDGET // (4 * config.block_size * config.vocab_size)))


def main(argv=None):
    args = build_parser().parse_args(argv)
    text = read_text_file(args.data, what="data file")
    model, tokenizer, source = load_checkpoint(args.checkpoint, device=args.device)
    ids = tokenizer.encode(text, allowed_special="all") if tokenizer.eot_token is not None else tokenizer.encode(text)
    block_size = model.config.block_size
    stride = block_size if args.stride is None else args.stride
    batch_size = default_batch_size(model.config) if args.batch_size is None else args.batch_size
    loss, ppl, n_scored = perplexity(model, ids, stride=stride, batch_size=batch_size, option=hyphenated)
    print(f"{source}: {args.data}: {n_scored} tokens scored, block size {block_size}, stride {stride}")
    print(f"loss {loss:.4f}  perplexity {ppl:.4f}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
