"""What the load-time checks of issue 23 cost per GB: a checkpoint file's sha256, and a token file's max.

    python scripts/bench/bench_checks.py              # 1 GB of random GPT-2 token ids in a temporary file
    python scripts/bench/bench_checks.py --gb 4

Writes the file once, then times each check --repeats times with the file in the
page cache (a cold file adds its disk read) and prints the best and the median, in s per GB.
Not a test: timings depend on the machine and its load (say both when quoting them).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import machine  # noqa: E402  (scripts/bench/machine.py, beside this script)
from minigpt.checksums import file_sha256  # noqa: E402
from minigpt.data import check_token_file  # noqa: E402


def timed(fn, repeats: int) -> list:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="size of the token file in GB (default: 1)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    count = int(args.gb * 2**30) // 2
    print(machine.header())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.bin"
        np.random.default_rng(0).integers(0, 50257, count, dtype=np.uint16).tofile(path)
        tokens = np.memmap(path, dtype="<u2", mode="r")
        meta = {"train_tokens": count, "dtype": "uint16", "vocab_size": 50257}
        gb = path.stat().st_size / 2**30
        print(f"{gb:.2f} GB file")
        for name, fn in (("sha256 (hashlib)", lambda: file_sha256(path)),
                         ("token max (chunked)", lambda: check_token_file(tokens, meta, "train", path))):
            times = [t / gb for t in timed(fn, args.repeats)]
            print(f"{name:22s} best {min(times):.3f} s/GB, median {statistics.median(times):.3f} s/GB")


if __name__ == "__main__":
    main()
