"""scripts/bench/ceiling.py: its list of products is the model's arithmetic, and a tiny run prints the table."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt.model import GPT, GPTConfig
from minigpt.fast.attention import query_blocks

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench" / "ceiling.py"
sys.path.insert(0, str(SCRIPT.parent))
import ceiling  # noqa: E402
from bench import SHAPES  # noqa: E402


def run(*argv):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], capture_output=True, text=True)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_products_add_up_to_the_models_flops_plus_the_diagonal_blocks(shape):
    # GPT.flops_per_token counts 6 flops per parameter (Kaplan's 6N), biases and LayerNorm's
    # gains included, which are no matrix product: take those out. It counts attention's causal
    # half exactly (T^2 / 2 scores per head); the blocked path scores, per block of query rows
    # s..e, every key up to e: (e - s) e.
    config, B, T, _ = SHAPES[shape]
    model = GPT(GPTConfig(**config), seed=0)
    vectors = sum(p.size for p in model.params.values() if p.ndim == 1)
    model_flops = (model.flops_per_token(T) - 6 * vectors) * B * T
    scored = sum((e - s) * e for s, e in query_blocks(T))
    extra = 6 * config["n_layer"] * config["n_embd"] * B * (2 * scored - T * T)  # 3 passes x 2 products x 2 flops
    assert sum(p.flops for p in ceiling.step_products(config, B, T)) == model_flops + extra


def test_operands_have_the_products_shapes_and_transposes():
    products = [ceiling.Product(1, 3, 4, 5, b_t=True), ceiling.Product(2, 3, 4, 5, a_t=True)]
    operands = ceiling.Operands(products)
    (a0, b0, out0), (a1, b1, out1) = operands.items
    assert a0.shape == (3, 4) and b0.shape == (4, 5) and out0.shape == (3, 5)
    assert b0.flags.f_contiguous and not b0.flags.c_contiguous  # stored (5, 4): a transposed view, as W^T
    assert a1.shape == (2, 3, 4) and a1.strides[-2:] == (4, 12)  # each (3, 4) stored as (4, 3)
    operands.run()
    np.testing.assert_allclose(out1, a1 @ b1, rtol=1e-6)


def test_a_tiny_run_prints_a_ceiling_per_shape():
    result = run("--shapes", "recipe-4x128", "--iters", 1, "--warmup", 0)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| recipe")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    workers, blas, best = (float(c.replace(",", "")) for c in cells[2:5])
    assert workers > 0 and blas > 0 and best == max(workers, blas)


def test_bad_iters_is_one_line():
    result = run("--iters", 0)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.startswith("error: --iters must be 1 or more") and result.stderr.count("\n") == 1
