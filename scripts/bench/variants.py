"""The experiment table of issue 16: nanoGPT's CPU Shakespeare-char recipe with GPT-2's layers, with each
switch alone, and with the modern combination, several seeds each.

    python scripts/bench/variants.py                          # every row, seeds 1337,1,2 (27 runs of the 2000-step recipe)
    python scripts/bench/variants.py --rows gpt2,rmsnorm      # some rows
    python scripts/bench/variants.py --rows modern --seeds 7  # one row, one seed
    python scripts/bench/variants.py --max_iters 2 --data small.txt   # other options go to train.py and win

Each run trains the recipe of scripts/bench/bench_train.py (4 layers, 4 heads, 128
wide, block 64, batch 12, 2000 iterations) with the row's switches, then measures the
whole-split validation loss (the exact mean over disjoint block_size windows,
minigpt.perplexity) and the step time (the median over logged steps of
tokens per step / tokens per second). It prints one JSON line per run, then the
table in Markdown: per row the parameter count, the whole-split val loss as mean
+- sample standard deviation over the seeds, the median step time, and the command
that reproduces the row.
"""

import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402  (scripts/bench/machine.py)
from bench_train import RECIPE  # noqa: E402

from minigpt.errors import MinigptError, run_cli  # noqa: E402
from minigpt.perplexity import perplexity  # noqa: E402
from minigpt.trainer import Trainer, resolve_config  # noqa: E402

# row name -> the switches it sets (train.py options); GPT-2's layers first, the modern combination last
ROWS = {
    "gpt2": {},
    "rmsnorm": {"norm": "rmsnorm"},
    "gelu": {"activation": "gelu"},
    "relu2": {"activation": "relu2"},
    "swiglu": {"activation": "swiglu"},
    "rotary": {"position": "rotary"},
    "untied": {"tie_embeddings": "false"},
    "gqa": {"n_kv_head": "2"},  # 4 query heads, 2 key/value heads
    "modern": {"norm": "rmsnorm", "activation": "swiglu", "position": "rotary", "tie_embeddings": "false"},
}
SWITCH_OPTIONS = {name for switches in ROWS.values() for name in switches}
DEFAULT_SEEDS = "1337,1,2"


def _take(argv, option, default):
    """(value of `option`, argv without it): this script's own options."""
    if option not in argv:
        return default, argv
    i = argv.index(option)
    if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        raise MinigptError(f"{option} needs a value, e.g. {option} {default}")
    return argv[i + 1], argv[:i] + argv[i + 2:]


def parse(argv):
    """(row names, seeds, train.py options) from the command line; every mistake is one MinigptError line."""
    argv = [str(a) for a in argv]
    rows, argv = _take(argv, "--rows", ",".join(ROWS))
    seeds, argv = _take(argv, "--seeds", DEFAULT_SEEDS)
    rows = rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise MinigptError(f"--rows: unknown row {unknown[0]!r}; use some of {', '.join(ROWS)}")
    try:
        seeds = [int(s) for s in seeds.split(",")]
    except ValueError:
        raise MinigptError(f"--seeds needs a comma-separated list of integers, got {seeds!r}") from None
    for arg in argv:
        name = arg.lstrip("-").split("=")[0].replace("-", "_")
        if arg.startswith("--") and name in SWITCH_OPTIONS | {"seed", "out_dir", "init_from"}:
            raise MinigptError(f"{arg.split('=')[0]} is set by this script (each row's switches, --seeds, a temporary "
                               f"out_dir); choose rows with --rows")
    resolve_config(RECIPE + argv)  # a bad train.py option fails here, before any run
    return rows, seeds, argv


def row_options(row):
    return [item for name, value in ROWS[row].items() for item in (f"--{name}", value)]


def run_once(row, seed, argv):
    """Train the recipe with this row's switches and seed; the run's measurements as a dict."""
    with tempfile.TemporaryDirectory(prefix="variants-") as out_dir:
        cfg = resolve_config(RECIPE + row_options(row) + argv + ["--seed", str(seed), "--out_dir", out_dir])
        trainer = Trainer(cfg)
        trainer.run()
        records = [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]
    steps = [cfg.tokens_per_iter / r["tokens_per_sec"] for r in records
             if r.get("tokens_per_sec") and r["iter"] > 0]
    full, _, _ = perplexity(trainer.model, trainer.data.val, batch_size=64, progress=False)
    return {"row": row, "seed": seed, "iters": cfg.max_iters, "params": trainer.model.num_params(),
            "val_loss_full": round(full, 4), "step_ms": round(1000 * statistics.median(steps), 2) if steps else None}


def table(runs, argv):
    """The Markdown table of the runs, one row per variant, in ROWS' order."""
    lines = ["| variant | switches | parameters | whole-split val loss (mean +- std, seeds) | step time (median) | command |",
             "|---|---|---:|---|---:|---|"]
    extra = "".join(f" {a}" for a in argv)
    for row in [r for r in ROWS if any(run["row"] == r for run in runs)]:
        mine = [run for run in runs if run["row"] == row]
        losses = [run["val_loss_full"] for run in mine]
        spread = statistics.stdev(losses) if len(losses) > 1 else 0.0
        times = [run["step_ms"] for run in mine if run["step_ms"] is not None]
        step = f"{statistics.median(times):.1f} ms" if times else "n/a"
        switches = " ".join(row_options(row)) or "(GPT-2)"
        seeds = ",".join(str(run["seed"]) for run in mine)
        command = f"`python scripts/bench/variants.py --rows {row} --seeds {seeds}{extra}`"
        lines.append(f"| {row} | {switches} | {mine[0]['params']:,} | {statistics.fmean(losses):.4f} +- {spread:.4f} "
                     f"({len(losses)}) | {step} | {command} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    rows, seeds, argv = parse(argv or [])
    print(machine.header())
    runs = []
    for row in rows:
        for seed in seeds:
            runs.append(run_once(row, seed, argv))
            print(json.dumps(runs[-1]), flush=True)
    print(table(runs, argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
