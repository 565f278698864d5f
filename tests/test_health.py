"""A run's health: --log_layers (per-layer gradient norms, update ratios) and --skip_spikes (llm.c's -sl/-sg)."""

import json
from pathlib import Path

import numpy as np
import pytest

from minigpt import health
from minigpt.health import OutlierDetector, SpikeDetector, layer_of, plot_layers
from minigpt.trainer import main

TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "16", "--block_size", "16", "--batch_size", "4",
        "--eval_iters", "2", "--log_interval", "1", "--sample_tokens", "0", "--warmup_iters", "2", "--workers", "1",
        "--eval_interval", "8", "--lr_decay_iters", "30", "--learning_rate", "3e-3"]


def read_log(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]


def train(*argv):
    assert main([str(a) for a in argv]) == 0


def test_outlier_detector_is_llmcs():
    values = [1.0, 2.0, 4.0, 3.0, 10.0, 2.0]
    detector = OutlierDetector(window=3)
    z = [detector.update(v) for v in values]
    assert z[:3] == [None] * 3  # the window fills first
    for i in range(3, 6):
        window = np.array(values[i - 2:i + 1])  # the last 3 values, the new one included
        assert z[i] == pytest.approx((values[i] - window.mean()) / window.std())


def test_layer_names():
    assert [layer_of(n) for n in ("transformer.h.11.mlp.c_fc.weight", "transformer.wte.weight", "lm_head.weight",
                                  "transformer.ln_f.bias")] == ["h.11", "wte", "lm_head", "ln_f"]


def test_log_layers_records_every_layer(tmp_path):
    train(*TINY, "--max_iters", 4, "--log_layers", "true", "--out_dir", tmp_path / "run")
    records = [r for r in read_log(tmp_path / "run") if "train_loss" in r]
    assert len(records) == 4
    for r in records:
        norms, ratios = r["layer_grad_norm"], r["layer_update_ratio"]
        assert list(norms) == ["wte", "wpe", "h.0", "h.1", "ln_f"] and list(ratios) == list(norms)
        # the layers' norms make up the whole gradient's norm (logged before clipping)
        assert np.sqrt(sum(v * v for v in norms.values())) == pytest.approx(r["grad_norm"], rel=1e-4)
        assert all(0 < v < 1 for v in ratios.values())


def test_skip_spikes_skips_what_the_detector_flags_and_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(health, "WINDOW", 4)
    z = 1.2  # low enough that some ordinary steps count as spikes
    train(*TINY, "--max_iters", 24, "--skip_spikes", z, "--out_dir", tmp_path / "whole")
    train(*TINY, "--max_iters", 11, "--skip_spikes", z, "--out_dir", tmp_path / "part")
    train(*TINY, "--max_iters", 24, "--skip_spikes", z, "--out_dir", tmp_path / "part", "--init_from", "resume")
    whole = [r for r in read_log(tmp_path / "whole") if "train_loss" in r]
    part = [r for r in read_log(tmp_path / "part") if "train_loss" in r]
    assert [(r["train_loss"], r.get("skipped")) for r in whole] == [(r["train_loss"], r.get("skipped")) for r in part]
    # the logged losses and norms, run through the detector again, flag exactly the skipped steps
    detector = SpikeDetector(z)
    expected = [detector.check(r["train_loss"], r["grad_norm"]) for r in whole]
    assert [r.get("skipped") for r in whole] == expected
    assert 0 < sum(e is not None for e in expected) < len(expected)
    # a skipped step leaves the weights alone: the next step's loss on its batch... is the same as with no step,
    # which the run without --skip_spikes shows by differing only from the first skipped iteration on
    train(*TINY, "--max_iters", 24, "--out_dir", tmp_path / "plain")
    plain = [r for r in read_log(tmp_path / "plain") if "train_loss" in r]
    first = next(i for i, e in enumerate(expected) if e is not None)
    assert [r["train_loss"] for r in plain[:first + 1]] == [r["train_loss"] for r in whole[:first + 1]]
    assert plain[first + 1]["train_loss"] != whole[first + 1]["train_loss"]


class Axes:
    """Records what is drawn on it (matplotlib is optional here)."""

    def __init__(self):
        self.lines = {}

    def plot(self, x, y, label):
        self.lines[label] = (list(x), list(y))

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def test_plot_layers_draws_a_line_per_layer():
    records = [{"iter": i, "layer_grad_norm": {"wte": 1.0 + i, "h.0": 2.0}, "layer_update_ratio": {"wte": 1e-3, "h.0": 1e-2}}
               for i in range(3)] + [{"iter": 3, "val_loss": 1.0}]
    grad, ratio = Axes(), Axes()
    plot_layers(grad, ratio, records)
    assert grad.lines["wte"] == ([0, 1, 2], [1.0, 2.0, 3.0])
    assert ratio.lines["h.0"][1] == pytest.approx([-2.0] * 3)
