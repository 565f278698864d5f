"""Parity with an outside implementation: Hugging Face's GPT2LMHeadModel under torch autograd.

The fixtures in tests/fixtures/ were written by scripts/bench/make_reference.py (torch and
transformers are never imported here). The same weights are stored in both namings
found in the wild; both must give the reference logits, loss and every gradient.
"""

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from minigpt.backend import tf32_enabled, to_host
from minigpt.model import GPT
from tests.conftest import rel_error

FIXTURES = Path(__file__).parent / "fixtures"
TOLERANCE = {"float64": 1e-9, "float32": 1e-4}
# On the GPU, float32 runs with TF32 on unless MINIGPT_TF32=0: CuPy reads the setting
# at the process's first float32 matmul and never again, so a test cannot turn it off
# for itself. TF32 rounds matmul inputs to a 10-bit mantissa (2^-11 ~ 5e-4 relative
# each); through 2 layers and their backward the logits and gradients differ from
# Hugging Face's FP32 by 7e-4 to 2e-3 (the review in issue 14). So with TF32 the
# float32 GPU check uses 5e-3 (2.5x the largest seen); run the suite with
# MINIGPT_TF32=0 to hold the GPU to the FP32 tolerance, as scripts/gpu_check.sh does.
TF32_TOLERANCE = 5e-3


def tolerance(device, dtype):
    if device == "gpu" and dtype == "float32" and tf32_enabled():
        return TF32_TOLERANCE
    return TOLERANCE[dtype]


@pytest.mark.parametrize("naming", ["gpt2_tiny_hub", "gpt2_tiny_saved"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_hugging_face(device, naming, dtype):
    ref = load_file(str(FIXTURES / f"gpt2_tiny_reference_{dtype}.safetensors"))
    model = GPT.from_pretrained(FIXTURES / naming, dtype=dtype, device=device).eval()
    assert model.config.vocab_size == 37 and model.config.n_layer == 2
    xp, tol = model.xp, tolerance(device, dtype)
    # eval mode (no dropout, as the reference), and the activations kept for the backward below
    logits, loss = model.forward(xp.asarray(ref["input_ids"]), xp.asarray(ref["targets"]), keep_for_backward=True)
    assert rel_error(logits, ref["logits"]) <= tol
    assert abs(float(to_host(loss)) - float(ref["loss"])) <= tol * abs(float(ref["loss"]))
    grads = model.backward()
    expected = {k[len("grad."):]: v for k, v in ref.items() if k.startswith("grad.")}
    assert set(expected) == set(grads)
    for name, g in expected.items():
        assert rel_error(grads[name], g) <= tol, name


def test_save_pretrained_round_trips(tmp_path):
    model = GPT.from_pretrained(FIXTURES / "gpt2_tiny_hub", dtype="float64")
    model.save_pretrained(tmp_path)
    again = GPT.from_pretrained(tmp_path, dtype="float64")
    for name, p in model.params.items():
        np.testing.assert_array_equal(again.params[name], p)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert set(saved) == {f"{k}" for k in model.params}  # transformer.-prefixed, no lm_head
