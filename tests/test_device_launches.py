"""The GPU code path's launches, counted on the CPU by tests/device_standin.py (no GPU).

What is pinned: per layer, attention's products are one GEMM each with no
copies per query block; LayerNorm, the causal softmax, GELU and the loss are
one fused kernel launch per pass; the training step never waits for the
device; and counting a GPT-2-shaped step gives the figures the README states
(scripts/bench/count_launches.py prints them).
"""

import numpy as np
import pytest

from minigpt import optim
from minigpt.model import GPT, GPTConfig
from minigpt.fast import attention
from tests import device_standin
from tests.device_standin import LAUNCHES


def launches(kind_prefix=""):
    return sum(v for k, v in LAUNCHES.items() if k.startswith(kind_prefix) and k not in ("sync", "d2h", "h2d"))


@pytest.fixture
def cupy():
    with device_standin.installed() as module:
        yield module


def test_attention_runs_one_gemm_per_product_and_two_copies_per_pass(cupy):
    B, T, C, H = 2, 10, 8, 2
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((B, T, C)).astype(np.float32))
    params = [cupy.asarray(rng.standard_normal(shape).astype(np.float32)) for shape in ((C, 3 * C), (3 * C,), (C, C), (C,))]
    n_blocks = len(attention.query_blocks(T))
    LAUNCHES.clear()
    out, cache = attention.forward(x, *params, H)
    forward = dict(LAUNCHES)
    LAUNCHES.clear()
    attention.backward(out, cache)
    backward = dict(LAUNCHES)

    assert forward["gemm"] == 2 + 2 * n_blocks  # c_attn, c_proj; q k^T and p v per block
    assert forward["copy"] == 2  # q|k|v to head-major, and the heads merged back
    assert forward["kernel causal_softmax_forward"] == n_blocks
    assert backward["gemm"] == 4 + 4 * n_blocks  # two per linear layer; dv, dp, dq, dk per block
    assert backward["copy"] == 2  # dy to head-major, dq|dk|dv back to (B, T, 3C)
    assert backward["kernel causal_softmax_backward"] == n_blocks
    assert "sync" not in forward and "sync" not in backward


def test_a_training_step_launches_fused_kernels_and_never_syncs(cupy, monkeypatch):
    monkeypatch.setattr(attention, "QUERY_BLOCK", 4)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=12, vocab_size=16)
    model = GPT(config, dtype="float32", device="gpu", seed=0).train()
    optimizer = optim.FlatAdamW(model.params, lr=1e-3)
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, (2, config.block_size + 1))
    idx, targets = cupy.asarray(tokens[:, :-1]), cupy.asarray(tokens[:, 1:])
    LAUNCHES.clear()
    model.forward(idx, targets)
    grads = model.backward()
    optimizer.step(grads, grad_clip=1.0)

    n_ln = 2 * config.n_layer + 1
    assert LAUNCHES["kernel layernorm_forward"] == LAUNCHES["kernel layernorm_backward_dx"] == n_ln
    assert LAUNCHES["kernel layernorm_backward_params"] == n_ln
    assert LAUNCHES["kernel cross_entropy_forward"] == LAUNCHES["kernel cross_entropy_backward"] == 1
    assert LAUNCHES["kernel minigpt_gelu_forward"] == LAUNCHES["kernel minigpt_gelu_backward"] == config.n_layer
    assert LAUNCHES["kernel adamw_flat_step"] == 1
    assert LAUNCHES["sync"] == 0 and LAUNCHES["d2h"] == 0  # nothing waits for the device inside a step


@pytest.mark.slow
def test_count_launches_script_reports_a_gpt2_step(capsys):
    """The README's figure for this checkout (a few seconds: 12 layers at T = 1024 on NumPy)."""
    from scripts.bench import count_launches

    count_launches.main([])
    out = capsys.readouterr().out
    totals = [int(line.split()[-1]) for line in out.splitlines() if "total with" in line]
    assert len(totals) == 2 and totals[1] < totals[0]
