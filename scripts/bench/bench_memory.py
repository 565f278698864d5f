"""Benchmark: peak memory and step time of large-model training, minigpt against PyTorch on the same shapes.

    python scripts/bench/bench_memory.py make gpt2-large /tmp/gpt2-large      # random weights, the real shapes
    /usr/bin/time -v python scripts/bench/bench_memory.py step /tmp/gpt2-large --recompute
    /usr/bin/time -v python scripts/bench/bench_memory.py step /tmp/gpt2-xl --lora_rank 8 --recompute
    /usr/bin/time -v /work/refvenv/bin/python scripts/bench/bench_memory.py torch /tmp/gpt2-large --checkpointing
    /usr/bin/time -v /work/refvenv/bin/python scripts/bench/bench_memory.py torch /tmp/gpt2-xl --lora_rank 8 --checkpointing

`make` writes config.json + model.safetensors with the project's own save (no
download). `step` builds train.py's Trainer on that directory (the memory plan,
the load, AdamW over what trains, the workers) and times `--steps` optimizer
steps of B = 1 x T = 1024 on Tiny Shakespeare; it prints the plan's peak beside
the process's peak RSS (ru_maxrss, which /usr/bin/time -v also reports as
"Maximum resident set size"). `torch` does the same step with transformers'
GPT2LMHeadModel and torch.optim.AdamW (fused off, foreach off: no copies of the
moments), with HF's gradient checkpointing (`--checkpointing`) and PEFT's LoRA
(`--lora_rank`). Run one at a time: the big ones take most of a 24 GB machine.
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
import machine  # noqa: E402  (scripts/bench/machine.py, beside this script)
from minigpt.errors import run_cli  # noqa: E402

DATA = Path(os.environ.get("MINIGPT_GPT2_TOKENIZER_DIR", "/work/shared/data")) / "tinyshakespeare.txt"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kB


def make(name, directory):
    from minigpt.model import GPT, GPTConfig
    from minigpt.tokenizer import BPETokenizer

    GPT(GPTConfig.preset(name), seed=0).save_pretrained(directory)
    BPETokenizer.from_files(DATA.parent / "encoder.json", DATA.parent / "vocab.bpe").save(directory)  # GPT-2's own
    print(f"wrote {directory} ({name}, random weights, GPT-2's tokenizer)")


def step(args):
    from minigpt.backend import scalar
    from minigpt.memory_plan import gib
    from minigpt.trainer import Trainer, resolve_config

    out = tempfile.mkdtemp(prefix="bench_memory_")
    argv = ["--init_from", args.directory, "--data", str(DATA), "--batch_size", "1", "--block_size", str(args.block_size),
            "--out_dir", out, "--recompute", str(args.recompute).lower(), "--lora_rank", str(args.lora_rank),
            "--dtype", "float32", "--workers", str(args.workers)]
    trainer = Trainer(resolve_config(argv))
    times = []
    for it in range(args.steps):
        start = time.perf_counter()
        loss, _ = trainer.train_step(it)
        loss = scalar(loss)
        times.append(time.perf_counter() - start)
        print(f"step {it}: loss {loss:.4f}, {times[-1]:.1f} s")
    from minigpt.memory_plan import Step, config_of, plan
    from minigpt.nn.lora import parse_targets

    p = plan(config_of(args.directory), Step(block_size=args.block_size, recompute=args.recompute,
                                             lora_rank=args.lora_rank, lora_targets=parse_targets("c_attn,attn.c_proj"),
                                             workers=trainer.parallel.workers))
    print(f"minigpt: step {min(times):.1f} s, peak RSS {peak_rss_gb():.2f} GB, plan {gib(p.peak)}")


def torch_step(args):
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel.from_pretrained(args.directory, torch_dtype=torch.float32)
    model.config.use_cache = False
    if args.checkpointing:
        model.gradient_checkpointing_enable()
    if args.lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=args.lora_rank, lora_alpha=8, target_modules=["c_attn", "attn.c_proj"],
                                                 fan_in_fan_out=True, task_type="CAUSAL_LM"))
        if args.checkpointing:
            model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1, foreach=False, fused=False)
    ids = torch.randint(0, 50257, (1, args.block_size + 1), generator=torch.Generator().manual_seed(0))
    times = []
    for it in range(args.steps):
        start = time.perf_counter()
        loss = model(input_ids=ids[:, :-1], labels=ids[:, 1:].clone()).loss  # HF shifts labels itself: a step's cost
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        print(f"step {it}: loss {loss.item():.4f}, {times[-1]:.1f} s")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads): step {min(times):.1f} s, "
          f"peak RSS {peak_rss_gb():.2f} GB")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("make", "step", "torch"))
    parser.add_argument("name_or_directory")
    parser.add_argument("directory", nargs="?")
    parser.add_argument("--recompute", action="store_true")
    parser.add_argument("--checkpointing", action="store_true", help="torch: HF gradient checkpointing")
    parser.add_argument("--lora_rank", type=int, default=0)
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args(argv)
    if args.what == "make":
        return make(args.name_or_directory, args.directory)
    args.directory = args.name_or_directory
    print(machine.header(sys.executable if args.what == "torch" else None))  # `torch` runs it in this process
    if args.what == "step":
        args.recompute = args.recompute or args.checkpointing
        return step(args)
    return torch_step(args)


if __name__ == "__main__":
    run_cli(main)
