"""Count the device launches of one GPT-2 124M training step, without a GPU.

    python scripts/bench/count_launches.py                     # this checkout
    python scripts/bench/count_launches.py --source /tmp/old   # another tree's minigpt/ (e.g. a git archive)

Runs one step (forward, cross-entropy, backward, clipping, AdamW) on the GPU
code path under tests/device_standin.py, a stand-in for CuPy over NumPy that
counts each launch real CuPy would make (kernels, cuBLAS calls, element-wise
ops, reductions, copies, fills). GPT-2 124M's structure: 12 layers, 12 heads,
T = 1024 (8 query blocks of 128), float32. The launch count does not depend
on the batch size, the width or the vocabulary (every launch covers the whole
batch), so those are shrunk (B=1, n_embd=24, V=64) to run in seconds on a CPU.
Both optimizers are counted: the per-tensor AdamW + clip_grad_norm, and the
flat-buffer FlatAdamW (clipping inside its one kernel) where the tree has it.
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def load_standin():
    spec = importlib.util.spec_from_file_location("device_standin", ROOT / "tests" / "device_standin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count_step(standin, optimizer_kind):
    """{part: launches} of one training step."""
    from minigpt import optim
    from minigpt.model import GPT, GPTConfig

    with standin.installed(values=False) as cupy:  # launches counted, not computed: seconds, and any tree's kernels
        config = GPTConfig(n_layer=12, n_head=12, n_embd=24, block_size=1024, vocab_size=64)
        model = GPT(config, dtype="float32", device="gpu", seed=0).train()
        if optimizer_kind == "flat":
            optimizer = optim.FlatAdamW(model.params, lr=1e-4)
        else:
            optimizer = optim.AdamW(model.params, lr=1e-4)
        tokens = np.random.default_rng(0).integers(0, config.vocab_size, (1, config.block_size + 1))
        idx, targets = cupy.asarray(tokens[:, :-1]), cupy.asarray(tokens[:, 1:])
        parts = {}
        standin.LAUNCHES.clear()
        model.forward(idx, targets)
        parts["forward + loss"] = dict(standin.LAUNCHES)
        standin.LAUNCHES.clear()
        grads = model.backward()
        parts["backward"] = dict(standin.LAUNCHES)
        standin.LAUNCHES.clear()
        if optimizer_kind == "flat":
            optimizer.step(grads, grad_clip=1.0)
        else:
            optim.clip_grad_norm(grads, 1.0)
            optimizer.step(grads)
        parts[f"clip + AdamW ({optimizer_kind})"] = dict(standin.LAUNCHES)
    return parts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="the tree whose minigpt/ is counted")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.source.resolve()))
    standin = load_standin()
    from minigpt import optim

    kinds = ["per-tensor"] + (["flat"] if hasattr(optim, "FlatAdamW") else [])
    print(f"minigpt from {args.source}: one GPT-2 124M training step (12 layers, 12 heads, T=1024), device launches")
    for kind in kinds:
        parts = count_step(standin, kind)
        total = 0
        for part, counts in parts.items():
            n = sum(v for k, v in counts.items() if k not in ("sync", "d2h", "h2d"))
            total += n
            detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
            print(f"  {part:28s} {n:6d}   ({detail})")
        print(f"  {'total with ' + kind + ' AdamW':28s} {total:6d}")


if __name__ == "__main__":
    main()
