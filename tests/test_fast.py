"""minigpt.fast against minigpt.nn: every fast path equals the plain layer it names, in float64, on the CPU.

The plain layers are checked against central differences (tests/test_nn.py,
scripts/gradcheck.py); these tests carry that to the fast versions the model
runs: the same outputs and the same gradients, to rounding. The CUDA kernels
are pinned to the NumPy twins here in tests/test_kernels_on_host.py and
tests/test_kernels.py.
"""

import ast
from pathlib import Path

import numpy as np
import pytest

from minigpt import fast
from minigpt.model import GPT, GPTConfig
from minigpt.nn import (attention, block, cross_entropy, gelu, gelu_erf, layernorm, relu2, rmsnorm, rotary, softmax,
                        swiglu)
from minigpt.nn.layers import LAYERS as PLAIN_LAYERS
from tests.test_variants import COMBINATIONS

TOL = dict(rtol=1e-12, atol=1e-12)
FAST = Path(fast.__file__).parent


def assert_same(fast_out, plain_out, what=""):
    """Arrays, dicts of arrays and tuples of them, equal to TOL; dicts with the same keys in the same order."""
    if isinstance(plain_out, dict):
        assert list(fast_out) == list(plain_out), what
        for name in plain_out:
            assert_same(fast_out[name], plain_out[name], f"{what} {name}")
    elif isinstance(plain_out, tuple):
        for i, (a, b) in enumerate(zip(fast_out, plain_out, strict=True)):
            assert_same(a, b, f"{what}[{i}]")
    elif plain_out is None:
        assert fast_out is None, what
    else:
        assert np.shape(fast_out) == np.shape(plain_out), what
        np.testing.assert_allclose(fast_out, plain_out, **TOL, err_msg=what)


def both(plain, fast_module, args, dout=None, seed=0):
    """forward and backward of the plain layer and of the fast one on the same arguments."""
    out, cache = plain.forward(*args)
    out_fast, cache_fast = fast_module.forward(*args)
    assert_same(out_fast, out, "out")
    dout = np.random.default_rng(seed).standard_normal(np.shape(out)) if dout is None else dout
    assert_same(fast_module.backward(dout, cache_fast), plain.backward(dout, cache), "backward")


def randn(*shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


# -- the table --------------------------------------------------------------------------------------


def test_the_table_is_the_plain_one_with_the_fast_layers_swapped_in():
    assert list(fast.LAYERS) == list(PLAIN_LAYERS)
    swapped = {name for name in PLAIN_LAYERS if fast.LAYERS[name] is not PLAIN_LAYERS[name]}
    assert swapped == {"attention", "layernorm", "rmsnorm", "gelu_tanh", "gelu", "swiglu", "cross_entropy",
                       "cross_entropy_in_place"}
    for name, layer in fast.LAYERS.items():
        assert callable(layer.forward) and callable(layer.backward), name
    config = GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=4, vocab_size=5)
    assert GPT(config).layers is fast.LAYERS  # the model runs the fast table unless told otherwise
    assert GPT(config, fast=False).layers is PLAIN_LAYERS


def test_every_fast_function_names_the_plain_function_it_must_equal():
    for path in sorted(FAST.glob("*.py")):
        if path.name in ("__init__.py", "block.py"):
            continue
        tree = ast.parse(path.read_text())
        module_doc = ast.get_docstring(tree)
        plain = f"minigpt.nn.{path.stem}"
        assert f"must equal {plain}" in " ".join(module_doc.split()), path.name
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in ("forward", "backward"):
                assert (ast.get_docstring(node) or "").startswith(f"{plain}.{node.name}"), f"{path.name}: {node.name}"


def test_no_plain_layer_imports_the_kernels_the_fast_layers_or_numpy():
    """Without NumPy imported there is no `array_module(x) is np` to branch on: one code for every device."""
    for path in sorted((FAST.parent / "nn").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] != "numpy" and not name.startswith(("minigpt.kernels", "minigpt.fast")), \
                    f"{path.name} imports {name}"


# -- layer by layer -----------------------------------------------------------------------------------


def test_gelu():
    x = randn(3, 7, 16, scale=3.0)
    both(gelu, fast.gelu, (x,))
    both(gelu_erf, fast.gelu_erf, (x,))


def test_relu2_has_no_fast_twin_and_the_table_keeps_the_plain_one():
    assert fast.LAYERS["relu2"] is relu2


@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm(with_bias):
    x, w, b = randn(2, 5, 12, scale=3.0), randn(12, seed=1), randn(12, seed=2)
    both(layernorm, fast.layernorm, (x, w, b if with_bias else None))


def test_rmsnorm():
    both(rmsnorm, fast.rmsnorm, (randn(2, 5, 12, scale=3.0), randn(12, seed=1)))
    with pytest.raises(ValueError):
        fast.rmsnorm.forward(randn(2, 12), randn(12), randn(12))


@pytest.mark.parametrize("t_q, t_k", [(1, 1), (5, 5), (3, 8), (1, 33)])
def test_causal_softmax(t_q, t_k):
    both(softmax, fast.softmax, (randn(2, 3, t_q, t_k, scale=4.0), 0.37))


def test_cross_entropy_and_its_in_place_pair():
    logits, targets = randn(2, 6, 50, scale=3.0), np.random.default_rng(1).integers(0, 50, (2, 6))
    targets[0, :2] = -1
    both(cross_entropy, fast.cross_entropy, (logits, targets), dout=0.7)
    loss, cache = cross_entropy.forward(logits, targets)
    mine = logits.copy()
    loss_in_place, cache_in_place = fast.cross_entropy.IN_PLACE.forward(mine, targets)
    np.testing.assert_allclose(loss_in_place, loss, **TOL)
    assert_same(fast.cross_entropy.IN_PLACE.backward(0.7, cache_in_place), cross_entropy.backward(0.7, cache))


def test_swiglu():
    C, h = 6, 10
    args = (randn(2, 4, C), randn(C, h, seed=1), randn(h, seed=2), randn(C, h, seed=3), randn(h, seed=4),
            randn(h, C, seed=5), randn(C, seed=6))
    both(swiglu, fast.swiglu, args)


ATTENTION = {  # name: (C, H, n_kv_head, rotary)
    "gpt2": (12, 3, None, False),
    "gqa": (12, 6, 2, False),
    "mqa-rotary": (12, 6, 1, True),
    "rotary": (12, 3, None, True),
}


def attention_args(variant, T=7, seed=0):
    C, H, n_kv_head, with_rope = ATTENTION[variant]
    D = C // H
    width = C + 2 * (n_kv_head or H) * D
    params = (randn(C, width, seed=seed + 1, scale=0.5), randn(width, seed=seed + 2),
              randn(C, C, seed=seed + 3, scale=0.5), randn(C, seed=seed + 4))
    rope = rotary.tables(np, np.float64, 0, T, D, base=100.0) if with_rope else None
    return randn(2, T, C, seed=seed), params, H, n_kv_head, rope


@pytest.mark.parametrize("query_block", [2, 3, 7, 128])
@pytest.mark.parametrize("variant", ATTENTION)
def test_attention(variant, query_block, monkeypatch):
    """The blocks of query rows (keys after a block never scored) give the textbook attention."""
    monkeypatch.setattr(fast.attention, "QUERY_BLOCK", query_block)
    x, params, H, n_kv_head, rope = attention_args(variant)
    both(attention, fast.attention, (x, *params, H, 0.0, None, False, n_kv_head, rope))


@pytest.mark.parametrize("variant", ATTENTION)
def test_attention_with_dropout_in_one_block(variant):
    """One block of queries draws the same (B, H, T, T) dropout mask as the textbook path: equal with dropout on."""
    x, params, H, n_kv_head, rope = attention_args(variant)
    out, cache = attention.forward(x, *params, H, 0.3, np.random.default_rng(5), True, n_kv_head, rope)
    out_fast, cache_fast = fast.attention.forward(x, *params, H, 0.3, np.random.default_rng(5), True, n_kv_head, rope)
    assert_same(out_fast, out)
    dout = randn(*out.shape, seed=9)
    assert_same(fast.attention.backward(dout, cache_fast), attention.backward(dout, cache))


@pytest.mark.parametrize("query_block", [3, 128])
def test_heads_major_attention(query_block, monkeypatch):
    """The GPU's layout, run on NumPy: the textbook attention's output and gradients."""
    monkeypatch.setattr(fast.attention, "QUERY_BLOCK", query_block)
    x, params, H, _, _ = attention_args("gpt2")
    heads_major = type("HeadsMajor", (), {"forward": staticmethod(fast.attention.forward_heads_major),
                                          "backward": staticmethod(fast.attention.backward_heads_major)})
    both(attention, heads_major, (x, *params, H))


@pytest.mark.parametrize("variant", ATTENTION)
def test_the_kv_cache_step_is_the_textbook_attention_a_few_rows_at_a_time(variant):
    x, params, H, n_kv_head, rope = attention_args(variant, T=7)
    out, _ = attention.forward(x, *params, H, n_kv_head=n_kv_head, rope=rope)
    kv_heads, D = n_kv_head or H, x.shape[-1] // H
    keys, values = np.empty((2, kv_heads, 8, D)), np.empty((2, kv_heads, 8, D))
    pieces, length = [], 0
    for end in (4, 5, 7):  # a prompt of 4, then 1, then 2 positions
        step_rope = None if rope is None else (rope[0][length:end], rope[1][length:end])
        pieces.append(fast.attention.forward_cached(x[:, length:end], *params, H, keys, values, length, n_kv_head,
                                                    step_rope))
        length = end
    assert_same(np.concatenate(pieces, axis=1), out)


# -- a block and the whole model, plain table against fast table ---------------------------------------------


def switch_ids(switches):
    return "-".join(f"{k}={v}" for k, v in switches.items()) or "gpt2"


@pytest.mark.parametrize("switches", COMBINATIONS, ids=switch_ids)
def test_block(switches):
    config = GPTConfig(**{**dict(n_layer=1, n_head=2, n_embd=8, block_size=6, vocab_size=5), **switches})
    model = GPT(config, dtype="float64", seed=0)
    params = model.block_params(0)
    x = randn(2, 6, config.n_embd, seed=3)
    options = model._block_options(0, 6)
    out, cache = block.forward(x, params, config.n_head, **options)
    out_fast, cache_fast = block.forward(x, params, config.n_head, layers=fast.LAYERS, **options)
    assert_same(out_fast, out)
    dout = randn(*out.shape, seed=4)
    assert_same(block.backward(dout, cache_fast), block.backward(dout, cache))


@pytest.mark.parametrize("switches", COMBINATIONS, ids=switch_ids)
def test_model_loss_and_gradients(switches, monkeypatch):
    """GPT(fast=False) and GPT(): the same loss, the same gradients (several query blocks, ignored targets)."""
    monkeypatch.setattr(fast.attention, "QUERY_BLOCK", 3)
    config = GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=8, block_size=8, vocab_size=11), **switches})
    plain, quick = GPT(config, dtype="float64", seed=0, fast=False), GPT(config, dtype="float64", seed=0)
    rng = np.random.default_rng(1)
    idx, targets = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
    targets[1, :3] = -1
    logits, loss = plain.forward(idx, targets)
    grads = plain.backward()
    for return_logits in (True, False):  # False: the loss in the logits' memory
        logits_fast, loss_fast = quick.forward(idx, targets, return_logits=return_logits)
        np.testing.assert_allclose(loss_fast, loss, **TOL)
        if return_logits:
            assert_same(logits_fast, logits)
        assert_same(quick.backward(), grads)
