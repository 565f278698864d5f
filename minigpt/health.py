"""A run's health: per-layer gradient norms and update-to-weight ratios, and skipping loss spikes.

Layer statistics (`--log_layers true`). For each layer l (wte, wpe, h.0 .. h.{n-1},
ln_f, lm_head: the parameters grouped by their name's prefix), at a logged iteration:

    grad_norm_l    = ||g_l||_2                          the summed gradient, before clipping
    update_ratio_l = ||p_l(after) - p_l(before)||_2 / ||p_l(before)||_2

Karpathy's "makemore" diagnostic: a healthy AdamW run keeps the update ratio
near 1e-3 (log10 around -3); far above, the learning rate is too high for that
layer, far below, it learns slowly.

Spike skipping (`--skip_spikes Z`, as llm.c's -sl / -sg). llm.c's outlier
detector keeps the last WINDOW values of the loss and of the gradient norm;
once the window is full, each new value enters it and its z-score is taken
against the window's mean and standard deviation:

    z = (x - mean) / std            skip the update when z > Z, for the loss or the gradient norm

A skipped step leaves the weights, AdamW's moments and step count as they were.
The windows are saved in the checkpoint, so a resumed run skips what the
uninterrupted one would have.
"""

import math

import numpy as np

from minigpt.backend import scalar

WINDOW = 128  # llm.c's OUTLIER_DETECTOR_WINDOW_SIZE


class OutlierDetector:
    """llm.c's outlier_detector.h: z-score of each new value against the last WINDOW values (itself included)."""

    def __init__(self, window: int | None = None):
        self.window = window or WINDOW
        self.values = []  # oldest first; at most `window`

    def update(self, value: float) -> float | None:
        """Add `value`; its z-score, or None while the window is still filling (or on a non-finite value)."""
        if not math.isfinite(value):
            return None
        self.values.append(value)
        if len(self.values) <= self.window:
            return None
        del self.values[0]
        values = np.array(self.values, dtype=np.float64)
        std = values.std()
        return 0.0 if std == 0 else float((value - values.mean()) / std)


class SpikeDetector:
    """Decides, before each update, whether the step's loss or gradient norm is a spike to skip."""

    def __init__(self, z: float, window: int | None = None):
        self.z = z
        self.detectors = {"loss": OutlierDetector(window), "grad_norm": OutlierDetector(window)}

    def check(self, loss: float, grad_norm: float | None) -> str | None:
        """The name of the quantity that spiked ("loss" or "grad_norm"), or None to take the step."""
        spiked = None
        for name, value in (("loss", loss), ("grad_norm", grad_norm)):
            if value is None:
                continue
            z = self.detectors[name].update(value)
            if spiked is None and z is not None and z > self.z:
                spiked = name
        return spiked

    def state_dict(self) -> dict:
        return {name: list(d.values) for name, d in self.detectors.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, detector in self.detectors.items():
            detector.values = [float(v) for v in state.get(name, [])]


def layer_of(name: str) -> str:
    """transformer.h.3.attn.c_attn.weight -> h.3; transformer.wte.weight -> wte; lm_head.weight -> lm_head."""
    parts = name.removeprefix("transformer.").split(".")
    return f"h.{parts[1]}" if parts[0] == "h" else parts[0]


def layer_norms(arrays: dict) -> dict:
    """{layer: L2 norm over its parameters' arrays}, in the parameters' order."""
    sumsq = {}
    for name, a in arrays.items():
        layer = layer_of(name)
        sumsq[layer] = sumsq.get(layer, 0.0) + scalar((a * a).sum())
    return {layer: math.sqrt(s) for layer, s in sumsq.items()}


def update_ratios(before: dict, after: dict) -> dict:
    """{layer: ||after - before|| / ||before||}."""
    change = layer_norms({name: after[name] - before[name] for name in before})
    size = layer_norms(before)
    return {layer: change[layer] / size[layer] if size[layer] else 0.0 for layer in change}


def plot_layers(ax_grad, ax_ratio, records: list) -> None:
    """Per-layer gradient norms and log10 update ratios against iteration (the extra panels of loss.png)."""
    logged = [r for r in records if "layer_grad_norm" in r]
    if not logged:
        return
    its = [r["iter"] for r in logged]
    for layer in logged[-1]["layer_grad_norm"]:
        ax_grad.plot(its, [r["layer_grad_norm"].get(layer, np.nan) for r in logged], label=layer)
        ax_ratio.plot(its, [math.log10(max(r["layer_update_ratio"].get(layer, np.nan), 1e-30)) for r in logged],
                      label=layer)
    ax_grad.set_yscale("log")
    ax_grad.set_ylabel("gradient norm")
    ax_ratio.set_ylabel("log10 update / weight")
    ax_ratio.axhline(-3, color="gray", linestyle="--", linewidth=0.8)
    ax_ratio.set_xlabel("iteration")
    ax_grad.legend(fontsize=6, ncol=4)
    for ax in (ax_grad, ax_ratio):
        ax.grid(alpha=0.3)
