"""Benchmark: nanoGPT's CPU recipe, character-level Tiny Shakespeare, 2000 iterations.

    python scripts/bench_train.py                 # --dataset shakespeare (downloaded once)
    python scripts/bench_train.py --device gpu    # extra options go to train.py and win

nanoGPT (PyTorch, same recipe) reaches val loss 1.886 in 61 s of wall time on a
2-core AMD EPYC Zen4 VM; the target is val loss <= 1.90, no slower. The report
gives the final val loss, the wall time of the training loop (data preparation
excluded, evaluations and checkpoints included, as nanoGPT's 61 s do) and the
mean training throughput.
"""

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from minigpt.errors import run_cli  # noqa: E402
from minigpt.trainer import Trainer, resolve_config  # noqa: E402

RECIPE = [
    "--dataset", "shakespeare", "--tokenizer", "char",
    "--n_layer", "4", "--n_head", "4", "--n_embd", "128", "--block_size", "64", "--batch_size", "12",
    "--max_iters", "2000", "--lr_decay_iters", "2000", "--learning_rate", "1e-3", "--min_lr", "1e-4",
    "--beta2", "0.99", "--warmup_iters", "100", "--dropout", "0.0", "--eval_iters", "20",
    "--eval_interval", "250", "--log_interval", "10", "--sample_tokens", "0",
]
TARGET_VAL_LOSS = 1.90
NANOGPT_SECONDS = 61.0


def main(argv=None) -> int:
    argv = list(argv or [])
    with tempfile.TemporaryDirectory(prefix="bench_train-") as out_dir:
        trainer = Trainer(resolve_config(RECIPE + ["--out_dir", out_dir] + argv))  # data is prepared here
        start = time.perf_counter()
        trainer.run()
        seconds = time.perf_counter() - start
        records = [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_loss" in r][-1]
    steps = [r["tokens_per_sec"] for r in records if "val_loss" not in r and r["iter"] > 0]
    cfg = trainer.cfg
    print(json.dumps({
        "iters": cfg.max_iters, "val_loss": round(val["val_loss"], 4), "train_loss": round(val["train_loss"], 4),
        "wall_s": round(seconds, 1), "mean_tokens_per_sec": round(sum(steps) / max(len(steps), 1)),
        "device": cfg.device, "dtype": cfg.dtype, "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "python": platform.python_version(),
    }))
    verdict = "PASS" if val["val_loss"] <= TARGET_VAL_LOSS else "FAIL"
    print(f"{verdict}: val loss {val['val_loss']:.4f} (target <= {TARGET_VAL_LOSS}) in {seconds:.1f} s "
          f"(nanoGPT/PyTorch on the 2-core reference VM: 1.886 in {NANOGPT_SECONDS:.0f} s)")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
