"""scripts/gradcheck.py and minigpt.gradcheck: every layer's row passes, and a broken backward fails its row."""

import importlib.util
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from minigpt import gradcheck
from minigpt.nn import attention, layernorm

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gradcheck.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gradcheck_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_checks_every_layer_and_the_model():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:-1]]
    assert {row[0] for row in rows} == set(gradcheck.LAYERS)
    assert all(row[-1] == "ok" and float(row[-2]) <= 1e-6 for row in rows)
    model_rows = {row[1] for row in rows if row[0] == "model"}
    assert {"transformer.wte.weight", "transformer.h.1.attn.c_attn.weight", "transformer.ln_f.bias"} <= model_rows
    assert result.stdout.splitlines()[-1].startswith(f"all {len(rows)} gradients match")


def test_script_checks_one_layer(capsys):
    assert load_script().main(["--layer", "layernorm"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[2:-1]] == [["layernorm", "x"], ["layernorm", "weight"], ["layernorm", "bias"]]


def test_script_bad_layer_is_one_line_listing_the_choices():
    result = subprocess.run([sys.executable, str(SCRIPT), "--layer", "attn"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: argument --layer: invalid choice: 'attn'")
    assert all(f"'{name}'" in result.stderr for name in gradcheck.LAYERS)


def break_line(monkeypatch, module, old, new):
    """Replace `module.backward` by its own source with one line changed (what the README's exercise does by hand)."""
    source = textwrap.dedent(inspect.getsource(module.backward))
    assert source.count(old) == 1, f"{old!r} is not one line of {module.__name__}.backward"
    namespace = dict(vars(module))
    exec(compile(source.replace(old, new), inspect.getsourcefile(module), "exec"), namespace)
    monkeypatch.setattr(module, "backward", namespace["backward"])


@pytest.mark.parametrize(
    "module, layer, old, new, failing",
    [
        # the exercise of minigpt/nn/README.md: drop the mean(dxhat) term of LayerNorm's dx
        (layernorm, "layernorm", "                 - dxhat.mean(axis=-1, keepdims=True)\n", "", {"x"}),
        # dv = probs @ dy instead of probs^T @ dy: v's part of qkv is wrong, c_proj's gradients stay right
        (attention, "attention", "dv = transpose(probs) @ dy", "dv = probs @ dy", {"x", "c_attn.weight", "c_attn.bias"}),
    ],
)
def test_a_broken_backward_fails_its_rows(monkeypatch, capsys, module, layer, old, new, failing):
    rows = gradcheck.check(layer)
    assert all(row.passed for row in rows)
    break_line(monkeypatch, module, old, new)
    rows = gradcheck.check(layer)
    assert {row.name for row in rows if not row.passed} == failing
    assert all(row.error > 1e-3 for row in rows if not row.passed)  # far above rounding, not a close call
    assert load_script().main(["--layer", layer]) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL") == len(failing) + 1  # one per failing row, and the summary line
