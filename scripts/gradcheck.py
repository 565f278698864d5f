"""Check every layer's backward against central differences of its forward, in float64.

    python scripts/gradcheck.py                    # every layer, then the whole model
    python scripts/gradcheck.py --layer attention  # one layer

Prints one row per input or parameter: the layer, what the gradient is of, and
the relative error between the backward's gradient and the numerical one. The
whole model is checked twice: rows `model...` on the fast layers it runs
(minigpt/fast), rows `model..._plain` on the plain ones (minigpt/nn). The
exit status is 1 if any row is above the tolerance (1e-6). How it works, and an
exercise (break a line of a backward and watch its row fail): minigpt/nn/README.md.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from minigpt import gradcheck  # noqa: E402
from minigpt.cli import ArgumentParser, add_option  # noqa: E402
from minigpt.errors import run_cli  # noqa: E402


def build_parser():
    parser = ArgumentParser(description="Gradient check of every layer (or one) against central differences.")
    add_option(parser, "--layer", choices=list(gradcheck.LAYERS), default=None,
               help="check this layer only (default: all, then the whole model)")
    return parser


def format_table(rows):
    """The rows as aligned columns: layer, gradient of, relative error, ok or FAIL."""
    layer_width = max(len("layer"), *(len(row.layer) for row in rows))
    name_width = max(len("gradient of"), *(len(row.name) for row in rows))
    header = f"{'layer':<{layer_width}}  {'gradient of':<{name_width}}  relative error"
    lines = [header, "-" * (len(header) + 6)]
    for row in rows:
        verdict = "ok" if row.passed else "FAIL"
        lines.append(f"{row.layer:<{layer_width}}  {row.name:<{name_width}}  {row.error:>14.1e}  {verdict}")
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    rows = gradcheck.check(args.layer)
    print(format_table(rows))
    failed = [row for row in rows if not row.passed]
    seconds = time.perf_counter() - start
    if failed:
        print(f"{len(failed)} of {len(rows)} gradients FAIL (relative error above {gradcheck.TOLERANCE:g}), {seconds:.1f} s")
        return 1
    print(f"all {len(rows)} gradients match their central differences (tolerance {gradcheck.TOLERANCE:g}), {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
