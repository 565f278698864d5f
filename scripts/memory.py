"""The memory plan of a training step, from the model's shapes alone (no weights read, nothing allocated).

    python scripts/memory.py --init_from gpt2-xl --batch_size 1 --block_size 1024 --recompute --lora_rank 8
    python scripts/memory.py --init_from checkpoints/my-model --batch_size 8 --workers 2 --memory 24GB

Prints parameters, gradients, optimizer state, activations (per block and in
all), workspace and the peak, and the largest --batch_size that fits --memory
(default: this machine's memory, or the GPU's with --device gpu). train.py runs
the same plan (minigpt/memory_plan.py) before it allocates anything.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from minigpt.cli import ArgumentParser  # noqa: E402
from minigpt.config import _parse_bool  # noqa: E402
from minigpt.errors import MinigptError, run_cli  # noqa: E402
from minigpt.memory_plan import Step, config_of, machine_memory, parse_bytes, plan  # noqa: E402
from minigpt.nn.lora import parse_targets  # noqa: E402
from minigpt.parallel import default_workers  # noqa: E402


def flag(text):
    try:
        return _parse_bool(text)
    except ValueError:
        raise MinigptError(f"expected true or false, got {text!r}") from None


def build_parser():
    parser = ArgumentParser(description="What a training step holds in memory, from the model's shapes.")
    parser.add_option("--init_from", required=True,
                      help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a checkpoint directory (its config.json)")
    parser.add_option("--batch_size", type=int, default=1, help="sequences per micro-batch")
    parser.add_option("--block_size", type=int, default=None, help="tokens per sequence (default: the model's context)")
    parser.add_option("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per step")
    parser.add_option("--dtype", default="float32", choices=("float32", "float64"), help="the arrays' type")
    parser.add_option("--recompute", type=flag, nargs="?", const=True, default=False,
                      help="keep only each block's input (train.py --recompute)")
    parser.add_option("--lora_rank", type=int, default=0, help="LoRA adapters of this rank, the base frozen (0: off)")
    parser.add_option("--lora_targets", default="c_attn,attn.c_proj", help="the layers LoRA adapts")
    parser.add_option("--lora_dropout", type=float, default=0.0, help="dropout on the adapters' input")
    parser.add_option("--dropout", type=float, default=0.0, help="dropout (its masks take memory)")
    parser.add_option("--workers", type=int, default=0, help="CPU worker threads (0: one per core)")
    parser.add_option("--ranks", type=int, default=1, help="processes (mpiexec -n N)")
    parser.add_option("--zero", type=flag, default=True, help="ZeRO-1: AdamW's moments sharded over the ranks")
    parser.add_option("--device", default="cpu", choices=("cpu", "gpu"), help="cpu or gpu (one worker)")
    parser.add_option("--memory", default=None,
                      help="the memory to fit, e.g. 24GB (default: this machine's, or the GPU's with --device gpu)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    config = config_of(args.init_from)
    block_size = args.block_size or config.block_size
    for name in ("batch_size", "gradient_accumulation_steps", "ranks", "block_size"):
        if (block_size if name == "block_size" else getattr(args, name)) < 1:
            raise MinigptError(f"--{name} must be at least 1")
    if block_size > config.block_size:
        raise MinigptError(f"--block_size {block_size} exceeds the model's context of {config.block_size} tokens")
    if args.lora_rank < 0 or args.workers < 0:
        raise MinigptError("--lora_rank and --workers must be 0 or more")
    workers = 1 if args.device != "cpu" else (args.workers or default_workers())
    step = Step(batch_size=args.batch_size, block_size=block_size,
                gradient_accumulation_steps=args.gradient_accumulation_steps, dtype=args.dtype,
                recompute=args.recompute, lora_rank=args.lora_rank, lora_targets=parse_targets(args.lora_targets),
                workers=workers, ranks=args.ranks, zero=args.zero, dropout=args.dropout,
                lora_dropout=args.lora_dropout, device=args.device)
    memory = parse_bytes(args.memory) if args.memory else machine_memory(args.device)
    print(plan(config, step).report(memory))
    if memory is None:
        print("(no memory size known for this device: give --memory, e.g. --memory 80GB)")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
