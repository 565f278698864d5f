"""AdamW against torch.optim.AdamW (through a fixture), gradient clipping, the learning-rate schedule."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from minigpt.backend import scalar, to_device, to_host
from minigpt.errors import MinigptError
from minigpt.optim import AdamW, clip_grad_norm, cosine_lr

FIXTURE = Path(__file__).parent / "fixtures" / "adamw_float64.safetensors"


def read_fixture():
    with safe_open(str(FIXTURE), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_adamw_matches_torch_for_ten_steps(device):
    tensors, meta = read_fixture()
    lrs = json.loads(meta["lr"])
    params = {"w": to_device(tensors["init.w"], device), "b": to_device(tensors["init.b"], device)}
    w_array = params["w"]
    opt = AdamW(params, lr=lrs[0], betas=tuple(json.loads(meta["betas"])), eps=float(meta["eps"]),
                weight_decay=float(meta["weight_decay"]))
    for k, lr in enumerate(lrs, start=1):
        grads = {name: to_device(tensors[f"grad.{name}.{k}"], device) for name in ("w", "b")}
        opt.step(grads, lr=lr)
        for name in ("w", "b"):
            want = tensors[f"param.{name}.{k}"]
            got = to_host(params[name])
            rel = np.abs(got - want).max() / np.abs(want).max()
            assert rel <= 1e-10, f"step {k}, {name}: rel error {rel:.2e}"
    assert params["w"] is w_array  # updated in place: the model's layers keep seeing the same array


def test_adamw_decays_only_matrices():
    """With a zero gradient, Adam's step is zero: only the decoupled decay moves a parameter."""
    params = {"w": np.ones((2, 2)), "b": np.ones(2)}
    opt = AdamW(params, lr=0.5, weight_decay=0.1)
    opt.step({"w": np.zeros((2, 2)), "b": np.zeros(2)})
    np.testing.assert_allclose(params["w"], 1 - 0.5 * 0.1)
    np.testing.assert_array_equal(params["b"], 1.0)


def test_adamw_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    init = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in init.items()} for _ in range(6)]

    straight = {k: v.copy() for k, v in init.items()}
    opt = AdamW(straight, lr=1e-2)
    for g in grads:
        opt.step(g)

    first = {k: v.copy() for k, v in init.items()}
    opt1 = AdamW(first, lr=1e-2)
    for g in grads[:3]:
        opt1.step(g)
    tensors, metadata = opt1.state_dict()
    resumed = {k: v.copy() for k, v in first.items()}
    opt2 = AdamW(resumed, lr=1e-2)
    opt2.load_state_dict(tensors, metadata)
    for g in grads[3:]:
        opt2.step(g)
    for k in init:
        np.testing.assert_array_equal(resumed[k], straight[k])


def test_adamw_rejects_state_of_another_model():
    opt = AdamW({"w": np.zeros((2, 2))})
    with pytest.raises(MinigptError, match="another model"):
        opt.load_state_dict({"m.w": np.zeros((3, 2)), "v.w": np.zeros((3, 2))}, {"step": "1"})


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(betas=(0.9, 1.0)), dict(weight_decay=-0.1)])
def test_adamw_rejects_impossible_hyperparameters(bad):
    with pytest.raises(MinigptError):
        AdamW({"w": np.zeros(2)}, **bad)


def test_clip_grad_norm_scales_to_max_norm(device):
    rng = np.random.default_rng(1)
    host = {"a": rng.standard_normal((5, 3)), "b": rng.standard_normal(7)}
    grads = {k: to_device(v.copy(), device) for k, v in host.items()}  # on the CPU to_device does not copy
    norm = math.sqrt(sum((v**2).sum() for v in host.values()))
    total = clip_grad_norm(grads, max_norm=0.5)
    assert scalar(total) == pytest.approx(norm, rel=1e-12)
    clipped = math.sqrt(sum(float((to_host(g) ** 2).sum()) for g in grads.values()))
    assert clipped == pytest.approx(0.5, rel=1e-5)
    np.testing.assert_allclose(to_host(grads["a"]) / host["a"], 0.5 / (norm + 1e-6))  # one common factor


def test_clip_grad_norm_leaves_small_gradients_alone():
    grads = {"a": np.array([0.3, 0.4])}
    total = clip_grad_norm(grads, max_norm=1.0)
    assert scalar(total) == pytest.approx(0.5)
    np.testing.assert_array_equal(grads["a"], [0.3, 0.4])


def test_cosine_schedule_shape():
    lr, min_lr, warmup, decay = 1e-3, 1e-4, 10, 100
    at = [cosine_lr(it, lr, min_lr, warmup, decay) for it in range(120)]
    assert all(a < b for a, b in zip(at[:warmup], at[1 : warmup + 1]))  # rises through warmup
    assert at[warmup] == pytest.approx(lr)  # peak right after warmup
    assert all(a >= b for a, b in zip(at[warmup:decay], at[warmup + 1 : decay + 1]))  # then decays
    assert at[decay] == pytest.approx(min_lr)
    assert cosine_lr((warmup + decay) // 2, lr, min_lr, warmup, decay) == pytest.approx((lr + min_lr) / 2, rel=0.02)
    assert at[110:] == [min_lr] * 10
