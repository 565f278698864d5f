"""nanoGPT's CPU recipe, the whole command: minigpt's train.py against nanoGPT's train.py, wall time, in pairs.

    python scripts/bench/bench_nanogpt.py --nanogpt-dir /path/to/nanoGPT --torch-python /path/to/venv/bin/python
    python scripts/bench/bench_nanogpt.py ... --pairs 5
    python scripts/bench/bench_nanogpt.py ... --max-iters 20 --pairs 1      # a quick check that both commands run

--nanogpt-dir is a checkout of https://github.com/karpathy/nanoGPT with its
Shakespeare-char data prepared (`python data/shakespeare_char/prepare.py` in
it); --torch-python is a Python with PyTorch and numpy, nanoGPT's requirements.
Each pair runs, from start to exit, the two commands a user types:

- minigpt: `python scripts/train.py` with bench_train.py's RECIPE (character
  Tiny Shakespeare, 4 layers, 4 heads, 128 wide, block 64, batch 12, 2000
  iterations, evaluations every 250), its output to a log;
- nanoGPT: `python train.py config/train_shakespeare_char.py --device=cpu
  --compile=False --eval_iters=20 --log_interval=1 --block_size=64
  --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
  --lr_decay_iters=2000 --dropout=0.0`, its README's CPU command, in the checkout.

Both write their checkpoints to a temporary folder (nanoGPT's --out_dir too,
so its checkout stays as it was). Which command goes first alternates from one
pair to the next, so a change in the machine's load hits both; the table gives
each pair, the medians and nanoGPT / minigpt (above 1: minigpt is faster).
Tiny Shakespeare is downloaded for minigpt before the first pair, untimed,
as nanoGPT's prepare.py did it for nanoGPT.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
import machine  # noqa: E402  (scripts/bench/machine.py, beside this script)
from bench_train import RECIPE  # noqa: E402
from minigpt.data import shakespeare_corpus  # noqa: E402
from minigpt.errors import MinigptError, run_cli  # noqa: E402

TRAIN = Path(__file__).resolve().parents[1] / "train.py"
NANOGPT_DATA = ("train.bin", "val.bin", "meta.pkl")  # what nanoGPT's data/shakespeare_char/prepare.py writes


def with_iters(options: list, max_iters: int) -> list:
    """`options` with --max_iters and --lr_decay_iters set to `max_iters` (the cosine schedule ends with the run)."""
    options = list(options)
    for name in ("--max_iters", "--lr_decay_iters"):
        options[options.index(name) + 1] = str(max_iters)
    return options


def minigpt_command(max_iters: int, out_dir) -> list:
    return [sys.executable, str(TRAIN), *with_iters(RECIPE, max_iters), "--out_dir", str(out_dir)]


def nanogpt_command(torch_python: str, max_iters: int, out_dir) -> list:
    """nanoGPT's README command for a CPU (the recipe's shape), run in its checkout."""
    return [torch_python, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
            "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
            "--n_embd=128", f"--max_iters={max_iters}", f"--lr_decay_iters={max_iters}", "--dropout=0.0",
            f"--out_dir={out_dir}"]


def check_nanogpt_dir(directory: Path) -> None:
    """A one-line MinigptError unless `directory` is a nanoGPT checkout with Shakespeare-char prepared."""
    if not (directory / "train.py").is_file() or not (directory / "config" / "train_shakespeare_char.py").is_file():
        raise MinigptError(f"--nanogpt-dir {directory} is not a nanoGPT checkout (no train.py and "
                           "config/train_shakespeare_char.py): git clone https://github.com/karpathy/nanoGPT")
    data = directory / "data" / "shakespeare_char"
    missing = [name for name in NANOGPT_DATA if not (data / name).is_file()]
    if missing:
        raise MinigptError(f"{data} has no {', '.join(missing)}: run `python data/shakespeare_char/prepare.py` "
                           f"in {directory} first")


def timed_run(name: str, command: list, cwd, log: Path) -> float:
    """Seconds from start to exit of `command`, its output in `log`; a failure is a one-line error."""
    with open(log, "w") as out:
        start = time.perf_counter()
        code = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - start
    if code != 0:
        last = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise MinigptError(f"{name}'s command failed (exit status {code}): {last}")
    return seconds


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt-dir", required=True, type=Path, help="a nanoGPT checkout, Shakespeare-char prepared")
    parser.add_argument("--torch-python", required=True, help="the Python that runs nanoGPT (has torch)")
    parser.add_argument("--pairs", type=int, default=3, help="pairs of runs, each command once per pair (default 3)")
    parser.add_argument("--max-iters", type=int, default=2000, help="iterations of both runs (default: the recipe's 2000)")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.max_iters < 1:
        raise MinigptError(f"--pairs and --max-iters must be 1 or more, got {args.pairs} and {args.max_iters}")
    args.nanogpt_dir = args.nanogpt_dir.resolve()
    check_nanogpt_dir(args.nanogpt_dir)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    where = machine.describe(args.torch_python)
    if "error" in where["torch"]:
        raise MinigptError(f"--torch-python {args.torch_python} cannot run PyTorch ({where['torch']['error']}): "
                           "give the Python nanoGPT runs with")
    shakespeare_corpus()  # downloaded once (untimed), as nanoGPT's prepare.py did for it
    print(machine.format_header(where))
    print(f"# nanoGPT's CPU recipe, whole command from start to exit, {args.max_iters} iterations, "
          f"{args.pairs} pair{'s' * (args.pairs > 1)}, alternating which goes first")
    print(f"# minigpt: python scripts/train.py {' '.join(with_iters(RECIPE, args.max_iters))} --out_dir <temporary>")
    print(f"# nanoGPT, in its checkout: python {' '.join(nanogpt_command('', args.max_iters, '<temporary>')[1:])}")
    print("| pair | first | minigpt (s) | nanoGPT (s) | nanoGPT / minigpt |")
    print("|---|---|---:|---:|---:|", flush=True)
    seconds = {"minigpt": [], "nanoGPT": []}
    with tempfile.TemporaryDirectory(prefix="bench_nanogpt-") as tmp:
        tmp = Path(tmp)
        for pair in range(args.pairs):  # each run in a fresh folder: neither resumes the other's checkpoints
            runs = {"minigpt": (minigpt_command(args.max_iters, tmp / f"minigpt-{pair}"), None),
                    "nanoGPT": (nanogpt_command(args.torch_python, args.max_iters, tmp / f"nanogpt-{pair}"),
                                args.nanogpt_dir)}
            order = ["minigpt", "nanoGPT"] if pair % 2 == 0 else ["nanoGPT", "minigpt"]
            for name in order:
                command, cwd = runs[name]
                seconds[name].append(timed_run(name, command, cwd, tmp / f"{name}-{pair}.log"))
            mine, theirs = seconds["minigpt"][-1], seconds["nanoGPT"][-1]
            print(f"| {pair + 1} | {order[0]} | {mine:.1f} | {theirs:.1f} | {theirs / mine:.2f}x |", flush=True)
    mine, theirs = statistics.median(seconds["minigpt"]), statistics.median(seconds["nanoGPT"])
    print(f"| median | | {mine:.1f} | {theirs:.1f} | {theirs / mine:.2f}x |")
    print(f"# load at the end {os.getloadavg()[0]:.2f} (1-minute average: the last command's own load included)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
