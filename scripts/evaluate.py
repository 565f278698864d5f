"""Loss and perplexity of a model on a text file, or its zero-shot score on HellaSwag or LAMBADA.

    python scripts/evaluate.py --checkpoint out --data data/my_text.txt
    python scripts/evaluate.py --checkpoint gpt2 --data valid.txt --stride 512
    python scripts/evaluate.py --checkpoint gpt2 --task hellaswag --data hellaswag_val.jsonl
    python scripts/evaluate.py --checkpoint gpt2 --task lambada --data lambada_test.jsonl --limit 500

--checkpoint takes what scripts/generate.py takes (a checkpoint directory, a
training out_dir, a Hugging Face GPT-2 directory, or gpt2/gpt2-medium/...).
--stride (default: the block size, disjoint windows) below the block size gives
every scored token more context; see minigpt/perplexity.py. --task hellaswag
reports acc and acc_norm (llm.c's completion style), --task lambada last-word
accuracy and perplexity; see minigpt/tasks.py and docs/data.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from minigpt.cli import ArgumentParser, hyphenated  # noqa: E402
from minigpt.data import read_text_file  # noqa: E402
from minigpt.errors import MinigptError, run_cli  # noqa: E402
from minigpt.loading import load_checkpoint  # noqa: E402
from minigpt.perplexity import perplexity  # noqa: E402
from minigpt.tasks import TASKS, load_items, score_task  # noqa: E402


def build_parser():
    parser = ArgumentParser(description="Loss and perplexity of a GPT model on a text file, or a zero-shot task score.")
    parser.add_option("--checkpoint", required=True,
                      help="checkpoint dir, training out_dir, Hugging Face GPT-2 dir, or gpt2/gpt2-medium/gpt2-large/gpt2-xl")
    parser.add_option("--data", required=True, help="a UTF-8 text file, or the task's .jsonl file with --task")
    parser.add_option("--task", default="text", choices=("text", *TASKS),
                      help="text: loss and perplexity of --data; hellaswag or lambada: a zero-shot score")
    parser.add_option("--limit", type=int, default=None, help="with --task: score only the first N items")
    parser.add_option("--stride", type=int, default=None, help="tokens between window starts (default: the block size)")
    parser.add_option("--batch-size", type=int, default=None,
                      help="windows (with --task: candidates) per forward pass "
                           "(default: 64, fewer when 64 windows' logits would pass 1 GiB)")
    parser.add_option("--device", default="cpu", choices=("cpu", "gpu"), help="cpu (NumPy) or gpu (CuPy)")
    return parser


LOGITS_BUDGET = 1 << 30  # bytes of float32 logits one forward pass may hold (GPT-2 small: 5 windows of 1024)


def default_batch_size(config) -> int:
    """64 windows per forward pass (4 took 12.3 s where 64 took 4.4 s, issue 23), capped so their logits fit LOGITS_BUDGET."""
    return max(1, min(64, LOGITS_BUDGET // (4 * config.block_size * config.vocab_size)))


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.task != "text":
        return evaluate_task(args)
    text = read_text_file(args.data, what="data file")
    model, tokenizer, source = load_checkpoint(args.checkpoint, device=args.device)
    ids = tokenizer.encode(text, allowed_special="all") if tokenizer.eot_token is not None else tokenizer.encode(text)
    block_size = model.config.block_size
    stride = block_size if args.stride is None else args.stride
    batch_size = default_batch_size(model.config) if args.batch_size is None else args.batch_size
    loss, ppl, n_scored = perplexity(model, ids, stride=stride, batch_size=batch_size, option=hyphenated)
    print(f"{source}: {args.data}: {n_scored} tokens scored, block size {block_size}, stride {stride}")
    print(f"loss {loss:.4f}  perplexity {ppl:.4f}")


def evaluate_task(args):
    """Score --task on the items of --data (the first --limit of them)."""
    if args.limit is not None and args.limit < 1:
        raise MinigptError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size is not None and args.batch_size < 1:
        raise MinigptError(f"--batch-size must be at least 1, got {args.batch_size}")
    items = load_items(args.task, args.data)[: args.limit]
    model, tokenizer, source = load_checkpoint(args.checkpoint, device=args.device)
    batch_size = default_batch_size(model.config) if args.batch_size is None else args.batch_size
    scores = score_task(args.task, model, tokenizer, items, batch_size=batch_size)
    print(f"{source}: {args.task} {args.data}: {scores['n']} items")
    if args.task == "hellaswag":
        print(f"acc {scores['acc']:.4f}  acc_norm {scores['acc_norm']:.4f}")
    else:
        print(f"acc {scores['acc']:.4f}  perplexity {scores['ppl']:.4f}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
