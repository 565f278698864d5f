"""Issue 16's switches: each layer against central differences and outside facts, the whole model in
combinations, KV-cache decoding, files (GPT-2's unchanged, the others exact round trips), train.py options."""

import json
import math

import numpy as np
import pytest

from minigpt import fast, gradcheck
from minigpt.config import TrainConfig, parse_args
from minigpt.errors import MinigptError
from minigpt.model import GPT, GPTConfig, mlp_hidden, param_shapes
from minigpt.nn import attention, gelu_erf, relu2, rmsnorm, rotary, swiglu
from minigpt.weights import config_to_hf
from tests.test_gradcheck import break_line
from tests.test_model import TINY, model_gradcheck, tiny_model

MODERN = dict(norm="rmsnorm", activation="swiglu", position="rotary", tie_embeddings=False, n_kv_head=1)
COMBINATIONS = [
    {},
    MODERN,
    dict(activation="gelu", n_kv_head=1, bias=False),
    dict(activation="relu2", position="rotary", tie_embeddings=False),
    dict(norm="rmsnorm", activation="swiglu", mlp_hidden=5, n_head=4, n_kv_head=2),
]


# -- the layers -----------------------------------------------------------------------------


def test_erf_is_math_erf_to_float64_precision():
    x = np.concatenate([np.linspace(-9.0, 9.0, 100_001), [0.0, 1.0, -1.0, 1 - 1e-12, 1 + 1e-12, 1e-300, 40.0]])
    expected = np.array([math.erf(v) for v in x])
    assert np.abs(gelu_erf.erf(x) - expected).max() <= 4e-16
    assert gelu_erf.erf(x.astype(np.float32)).dtype == np.float32


def test_exact_gelu_is_x_times_the_normal_cdf_and_differs_from_the_tanh_one():
    x = np.linspace(-6, 6, 241)
    expected = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(gelu_erf.forward(x)[0], expected, rtol=0, atol=1e-15)
    from minigpt.nn import gelu

    assert 1e-5 < np.abs(gelu.forward(x)[0] - expected).max() < 1e-2  # the tanh approximation is a different function


def test_rmsnorm_is_its_definition_and_has_no_bias():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 7)) * 4, rng.standard_normal(7)
    y, _ = rmsnorm.forward(x, w)
    np.testing.assert_allclose(y, x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w, rtol=1e-14)
    with pytest.raises(ValueError):
        rmsnorm.forward(x, w, np.zeros(7))


def test_relu2_and_silu_values():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0, -800.0, 800.0])
    np.testing.assert_array_equal(relu2.forward(x)[0], [0, 0, 0, 0.25, 9, 0, 640000])
    with np.errstate(over="raise", invalid="raise"):  # no overflow in exp for large |g|
        s, _ = swiglu.silu_forward(x)
    np.testing.assert_allclose(s, x / (1 + np.exp(-np.clip(x, -700, 700))), rtol=1e-15, atol=1e-290)


def test_rotary_is_a_rotation_whose_dot_products_depend_on_the_offset_only():
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal(8), rng.standard_normal(8)
    cos, sin = rotary.tables(np, np.float64, 0, 20, 8)
    rq = lambda t: rotary.forward(q[None], cos[t:t + 1], sin[t:t + 1])[0][0]  # noqa: E731
    rk = lambda t: rotary.forward(k[None], cos[t:t + 1], sin[t:t + 1])[0][0]  # noqa: E731
    assert np.isclose(np.linalg.norm(rq(7)), np.linalg.norm(q), rtol=1e-14)  # a rotation keeps lengths
    assert np.isclose(rq(5) @ rk(2), rq(15) @ rk(12), rtol=1e-12)  # only t - s matters
    assert not np.isclose(rq(5) @ rk(2), rq(5) @ rk(3))
    x = rng.standard_normal((2, 3, 20, 8))
    back, _ = rotary.backward(rotary.forward(x, cos, sin)[0], (cos, sin))
    np.testing.assert_allclose(back, x, atol=1e-14)  # the backward is the inverse rotation


@pytest.mark.parametrize("layer", ["rmsnorm", "gelu_erf", "relu2", "swiglu", "rotary", "attention_gqa_rotary",
                                   "attention_blocked_mqa_rotary", "block_modern"])
def test_each_variant_layer_passes_its_gradient_check(layer):
    rows = gradcheck.check(layer)
    assert rows and all(row.error <= 1e-6 for row in rows), [r for r in rows if not r.passed]


@pytest.mark.parametrize(
    "module, layer, old, new, failing",
    [
        (rmsnorm, "rmsnorm", "rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))", "rstd * dxhat",
         {"x"}),
        (swiglu, "swiglu", "return dx_fc + dx_gate, grads", "return dx_fc, grads", {"x"}),
        (rotary, "rotary", "_rotate(dout, cos, -sin)", "_rotate(dout, cos, sin)", {"x"}),
    ],
)
def test_a_broken_variant_backward_fails_its_rows(monkeypatch, module, layer, old, new, failing):
    break_line(monkeypatch, module, old, new)
    rows = gradcheck.check(layer)
    assert {row.name for row in rows if not row.passed} == failing
    assert all(row.error > 1e-3 for row in rows if not row.passed)


@pytest.mark.parametrize("layer", ["attention_gqa_rotary", "attention_blocked_mqa_rotary"])
def test_grouped_query_gradients_must_sum_over_the_group(monkeypatch, layer):
    """dk of a key/value head taken from the first query head of its group only: c_attn's k and v columns fail."""
    def first_of_group(dk_rep, n_kv_head):
        B, H, T, D = dk_rep.shape
        return dk_rep.reshape(B, n_kv_head, H // n_kv_head, T, D)[:, :, 0]

    monkeypatch.setattr(attention, "sum_kv", first_of_group)
    rows = gradcheck.check(layer)
    assert {row.name for row in rows if not row.passed} == {"x", "c_attn.weight", "c_attn.bias"}


def test_the_blocked_path_equals_the_textbook_one_with_grouped_query_and_rotary(monkeypatch):
    monkeypatch.setattr(fast.attention, "QUERY_BLOCK", 3)  # T = 7: blocks 0-2, 3-5, 6
    rng = np.random.default_rng(2)
    B, T, C, H, KV = 2, 7, 12, 6, 2
    x, dout = rng.standard_normal((B, T, C)), rng.standard_normal((B, T, C))
    params = (rng.standard_normal((C, C + 2 * KV * 2)), rng.standard_normal(C + 2 * KV * 2),
              rng.standard_normal((C, C)), rng.standard_normal(C))
    rope = rotary.tables(np, np.float64, 0, T, C // H)
    out, cache = attention.forward(x, *params, H, n_kv_head=KV, rope=rope)
    dx, grads = attention.backward(dout, cache)
    out_b, cache_b = fast.attention.forward(x, *params, H, n_kv_head=KV, rope=rope)
    dx_b, grads_b = fast.attention.backward(dout, cache_b)
    np.testing.assert_allclose(out_b, out, atol=1e-12)
    np.testing.assert_allclose(dx_b, dx, atol=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads_b[name], grads[name], atol=1e-12)


def test_one_key_value_head_per_query_head_is_gpt2_attention():
    """n_kv_head = n_head through the variant code (with rope of angle 0) equals GPT-2's path."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 8))
    params = (rng.standard_normal((8, 24)), rng.standard_normal(24), rng.standard_normal((8, 8)), rng.standard_normal(8))
    zero_angle = (np.ones((5, 2)), np.zeros((5, 2)))
    np.testing.assert_allclose(fast.attention.forward(x, *params, 2, rope=zero_angle)[0],
                               fast.attention.forward(x, *params, 2)[0], atol=1e-13)


# -- the whole model ------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("switches", COMBINATIONS[1:], ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_model_gradients_match_central_differences(switches, fast):
    model = tiny_model("cpu", dropout=0.1, fast=fast, **switches)
    rng = np.random.default_rng(5)
    idx, targets = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
    model_gradcheck(model, idx, targets)


@pytest.mark.parametrize("switches", COMBINATIONS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()) or "gpt2")
def test_kv_cache_decoding_equals_full_forwards(switches):
    model = tiny_model("cpu", **switches).eval()
    idx = np.random.default_rng(6).integers(0, 11, (2, 8))
    full, _ = model.forward(idx)
    cache = model.new_kv_cache()
    pieces = [model.forward_cached(idx[:, :3], cache)]  # a prompt, then one token at a time
    pieces += [model.forward_cached(idx[:, t:t + 1], cache) for t in range(3, 8)]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=0, atol=1e-10)
    assert cache.keys[0].shape[1] == model.config.n_kv_head  # the cache holds only the key/value heads


def test_generation_runs_with_every_switch():
    model = GPT(GPTConfig(**TINY, **MODERN), seed=0)
    out = model.generate(np.zeros((2, 1), dtype=np.int64), 6, seed=1)
    assert out.shape == (2, 7)


def test_parameter_names_and_counts():
    base = GPTConfig(n_layer=1, n_head=4, n_embd=48, block_size=16, vocab_size=10)
    modern = GPTConfig(**{**base.to_dict(), **MODERN, "n_kv_head": 2})
    names = set(param_shapes(modern))
    assert {"transformer.h.0.mlp.c_gate.weight", "transformer.h.0.mlp.c_gate.bias", "lm_head.weight"} <= names
    assert "transformer.wpe.weight" not in names and not any(n.startswith("transformer.h.0.ln_") and n.endswith(".bias")
                                                              for n in names)
    assert param_shapes(modern)["transformer.h.0.attn.c_attn.weight"] == (48, 48 + 2 * 2 * 12)
    assert mlp_hidden(modern) == 128  # 8 * 48 / 3
    swiglu_mlp = 3 * 48 * 128  # the weights of c_fc, c_gate, c_proj
    assert swiglu_mlp == 2 * 48 * 4 * 48  # as many as GPT-2's 4x MLP
    assert mlp_hidden(GPTConfig(**{**base.to_dict(), "activation": "swiglu", "n_embd": 64})) == 171  # round(170.67)
    assert mlp_hidden(GPTConfig(**{**base.to_dict(), "activation": "swiglu", "mlp_hidden": 7})) == 7


@pytest.mark.parametrize("bad, message", [
    (dict(norm="batchnorm"), "norm must be one of layernorm, rmsnorm, got 'batchnorm'"),
    (dict(activation="tanh"), "activation must be one of gelu_tanh, gelu, relu2, swiglu"),
    (dict(position="sinusoidal"), "position must be one of learned, rotary"),
    (dict(tie_embeddings="no"), "tie_embeddings must be one of true, false"),
    (dict(n_kv_head=3), "n_head 2 is not a multiple of n_kv_head 3"),
    (dict(n_kv_head=0), "n_kv_head must be a positive integer"),
    (dict(mlp_hidden=0), "mlp_hidden must be a positive integer"),
    (dict(rope_base=1.0), "rope_base must be a number above 1"),
    (dict(position="rotary", n_embd=6, n_head=2), "n_embd / n_head = 3 must be even"),
])
def test_invalid_switches_are_one_line_errors(bad, message):
    with pytest.raises(MinigptError, match=None) as err:
        GPTConfig(**{**TINY, **bad})
    assert message in str(err.value) and "\n" not in str(err.value)


# -- files ---------------------------------------------------------------------------------

GPT2_CONFIG_JSON = {  # what config_to_hf wrote before the switches existed, for a GPT-2 config
    "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_head": 2, "n_embd": 8,
    "n_positions": 8, "n_ctx": 8, "vocab_size": 11, "n_inner": None, "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
    "bos_token_id": None, "eos_token_id": None, "tie_word_embeddings": True, "bias": True,
}


def test_a_gpt2_config_writes_gpt2s_config_json_and_tensors(tmp_path):
    config = GPTConfig(**TINY, n_kv_head=2, mlp_hidden=32)  # both equal GPT-2's: still a GPT-2
    assert config.is_gpt2()
    assert json.dumps(config_to_hf(config)) == json.dumps(GPT2_CONFIG_JSON)  # the same keys, order and values
    GPT(config, seed=0).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == GPT2_CONFIG_JSON
    from minigpt.weights import read_safetensors

    names = set(read_safetensors(tmp_path / "model.safetensors"))
    assert names == set(param_shapes(GPTConfig(**TINY)))
    assert "transformer.wpe.weight" in names and not any("c_gate" in n or "lm_head" in n for n in names)


@pytest.mark.parametrize("switches", COMBINATIONS[1:], ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_a_variant_checkpoint_says_so_and_loads_back_exactly(tmp_path, switches):
    model = tiny_model("cpu", **switches)
    model.save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["model_type"] == "minigpt"  # transformers refuses it rather than build a GPT-2 from it
    assert {k: hf["minigpt"][k] for k in switches if k in hf["minigpt"]} == {k: v for k, v in switches.items()
                                                                          if k in hf["minigpt"]}
    loaded = GPT.from_pretrained(tmp_path, dtype="float64")
    assert loaded.config == model.config
    assert list(loaded.params) == list(model.params)
    for name in model.params:
        np.testing.assert_array_equal(loaded.params[name], model.params[name])


def test_a_file_with_an_unknown_switch_is_refused_in_one_line(tmp_path):
    GPT(GPTConfig(**TINY, **MODERN), seed=0).save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf["minigpt"]["qk_norm"] = True
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(MinigptError) as err:
        GPT.from_pretrained(tmp_path)
    assert "unknown switch 'qk_norm'" in str(err.value) and "\n" not in str(err.value)
    hf["minigpt"] = {"norm": "groupnorm"}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(MinigptError, match="norm must be one of layernorm, rmsnorm"):
        GPT.from_pretrained(tmp_path)
    del hf["minigpt"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(MinigptError, match="without its \"minigpt\" object"):
        GPT.from_pretrained(tmp_path)


# -- train.py ---------------------------------------------------------------------------------


def test_train_options_of_the_same_names():
    cfg, _ = parse_args(["--norm", "rmsnorm", "--activation", "swiglu", "--position", "rotary",
                         "--tie_embeddings", "false", "--n_kv_head", "2", "--rope_base", "500", "--mlp_hidden", "64"])
    assert (cfg.norm, cfg.activation, cfg.position, cfg.tie_embeddings, cfg.n_kv_head, cfg.rope_base, cfg.mlp_hidden) == (
        "rmsnorm", "swiglu", "rotary", False, 2, 500.0, 64)
    assert set(GPTConfig.__dataclass_fields__) - {"vocab_size"} <= set(TrainConfig.MODEL_FIELDS)
    with pytest.raises(MinigptError, match="--n_head 4 is not a multiple of --n_kv_head 3"):
        parse_args(["--n_kv_head", "3"])
    with pytest.raises(MinigptError, match="--activation must be one of"):
        parse_args(["--activation", "swish"])


# -- the CuPy path, on the CPU (tests/device_standin.py) ---------------------------------------

from tests.test_gpu_path_on_cpu import host_builds, one_step  # noqa: E402, F401 (host_builds is a fixture)


@pytest.mark.parametrize("switches", [
    MODERN,
    pytest.param(dict(activation="gelu", n_kv_head=1), marks=pytest.mark.slow),  # ~4 s each
    pytest.param(dict(activation="relu2", n_head=4, n_kv_head=2, position="rotary"), marks=pytest.mark.slow),
], ids=["modern", "gelu-mqa", "relu2-gqa-rotary"])
def test_a_training_step_with_switches_on_the_gpu_path_equals_the_cpu_path(host_builds, monkeypatch, switches):  # noqa: F811
    """The variants are xp code: under the CuPy stand-in they run the same operations as on NumPy."""
    from minigpt.kernels import softmax_cuda
    from tests import cuda_host, device_standin

    monkeypatch.setattr(fast.attention, "QUERY_BLOCK", 4)  # three query blocks at T = 10
    config = GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=16, block_size=10, vocab_size=17), **switches})
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (3, config.block_size + 1))
    params = {name: np.array(p) for name, p in GPT(config, dtype="float64", seed=1).params.items()}
    cpu_loss, cpu_grads, cpu_after = one_step(np, config, tokens, params)
    with device_standin.installed() as cupy:
        for module, built in host_builds.items():
            monkeypatch.setattr(module, "raw_kernel", cuda_host.host_launcher(*built, []))
        gpu_loss, gpu_grads, gpu_after = one_step(cupy, config, tokens, params)
    assert softmax_cuda in host_builds
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-12)
    for name, g in cpu_grads.items():
        np.testing.assert_allclose(gpu_grads[name], g, rtol=1e-10, atol=1e-12, err_msg=name)
    for name, p in cpu_after.items():
        np.testing.assert_allclose(gpu_after[name], p, rtol=1e-10, atol=1e-12, err_msg=name)


# -- training and resuming -----------------------------------------------------------------------

from tests.test_train import TINY as TRAIN_TINY, corpus, read_log, run_main, train_losses  # noqa: E402, F401


def test_the_modern_combination_trains_resumes_exactly_and_generates(tmp_path, corpus):  # noqa: F811
    """Issue 16's command (on a tiny model): N iterations then N more on resume == 2N in one run."""
    switches = ["--norm", "rmsnorm", "--activation", "swiglu", "--position", "rotary", "--tie_embeddings", "false",
                "--n_kv_head", 1]
    common = [*TRAIN_TINY, *switches, "--data", corpus, "--dropout", 0.1, "--eval_interval", 3, "--lr_decay_iters", 6]
    run_main(*common, "--max_iters", 6, "--out_dir", tmp_path / "straight")
    run_main(*common, "--max_iters", 3, "--out_dir", tmp_path / "split")
    run_main("--init_from", "resume", "--max_iters", 6, "--out_dir", tmp_path / "split")
    straight, split = read_log(tmp_path / "straight"), read_log(tmp_path / "split")
    assert train_losses(split) == train_losses(straight) and len(train_losses(split)) == 6
    a, b = GPT.from_pretrained(tmp_path / "straight" / "latest"), GPT.from_pretrained(tmp_path / "split" / "latest")
    assert a.config == b.config and (a.config.norm, a.config.n_kv_head, a.config.tie_embeddings) == ("rmsnorm", 1, False)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    assert a.generate(np.zeros((1, 1), dtype=np.int64), 5, seed=0).shape == (1, 6)
    with pytest.raises(MinigptError, match="--norm layernorm differs from the checkpoint's rmsnorm"):
        run_main("--init_from", "resume", "--max_iters", 8, "--norm", "layernorm", "--out_dir", tmp_path / "split")


# -- outside references: torch (scripts/bench/make_reference.py's variants_float64.safetensors) ----------

from pathlib import Path  # noqa: E402

from minigpt.weights import read_safetensors  # noqa: E402

REFERENCE = read_safetensors(Path(__file__).parent / "fixtures" / "variants_float64.safetensors")


def assert_matches_torch(layer, out, grads):
    np.testing.assert_allclose(out, REFERENCE[f"{layer}.out"], rtol=1e-12, atol=1e-12)
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, REFERENCE[f"{layer}.grad.{name}"], rtol=1e-10, atol=1e-12, err_msg=name)


def test_rmsnorm_equals_torch_nn_rmsnorm():
    r = REFERENCE
    out, cache = rmsnorm.forward(r["rmsnorm.x"], r["rmsnorm.weight"])
    dx, g = rmsnorm.backward(r["rmsnorm.dout"], cache)
    assert_matches_torch("rmsnorm", out, {"x": dx, "weight": g["weight"]})


def test_exact_gelu_and_silu_equal_torch():
    r = REFERENCE
    out, cache = gelu_erf.forward(r["gelu.x"])
    assert_matches_torch("gelu", out, {"x": gelu_erf.backward(r["gelu.dout"], cache)[0]})
    out, cache = swiglu.silu_forward(r["silu.x"])
    assert_matches_torch("silu", out, {"x": swiglu.silu_backward(r["silu.dout"], cache)[0]})


def test_swiglu_equals_torch():
    r = REFERENCE
    names = ("c_fc.weight", "c_gate.weight", "c_proj.weight")
    w_fc, w_gate, w_proj = (r[f"swiglu.{n}"] for n in names)
    out, cache = swiglu.forward(r["swiglu.x"], w_fc, None, w_gate, None, w_proj, None)
    dx, g = swiglu.backward(r["swiglu.dout"], cache)
    assert_matches_torch("swiglu", out, {"x": dx, **g})


def test_rotary_equals_llamas_apply_rotary_pos_emb():
    r = REFERENCE
    q, k = r["rotary.q"], r["rotary.k"]
    cos, sin = rotary.tables(np, np.float64, 0, q.shape[2], q.shape[3])
    out = np.concatenate([rotary.forward(q, cos, sin)[0], rotary.forward(k, cos, sin)[0]], axis=1)
    dout = r["rotary.dout"]
    H = q.shape[1]
    assert_matches_torch("rotary", out, {"q": rotary.backward(dout[:, :H], (cos, sin))[0],
                                         "k": rotary.backward(dout[:, H:], (cos, sin))[0]})


@pytest.mark.parametrize("forward, backward", [(attention.forward, attention.backward),
                                               (fast.attention.forward, fast.attention.backward)])
def test_grouped_query_attention_equals_torch_sdpa_with_enable_gqa(monkeypatch, forward, backward):
    monkeypatch.setattr(fast.attention, "QUERY_BLOCK", 4)  # T = 6: two blocks on the fast path
    r = REFERENCE
    params = [r[f"gqa.{n}"] for n in ("c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias")]
    out, cache = forward(r["gqa.x"], *params, 6, n_kv_head=2)
    dx, g = backward(r["gqa.dout"], cache)
    assert_matches_torch("gqa", out, {"x": dx, **g})


def test_gpt2s_config_never_enters_the_variant_code(monkeypatch):
    """Every switch at GPT-2's value: training and KV-cache decoding run GPT-2's own attention and layers."""
    def refuse(*args, **kwargs):
        raise AssertionError("GPT-2's path entered the variant code")

    for module, name in ((fast.attention, "project_qkv"), (fast.attention, "_forward_variant"), (rotary, "forward")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setitem(fast.LAYERS, "rmsnorm", None)
    model = tiny_model("cpu", dropout=0.1)
    idx = np.arange(16).reshape(2, 8) % 11
    model.forward(idx, idx)
    model.backward()
    model.eval().forward_cached(idx, model.new_kv_cache())
    with pytest.raises(AssertionError, match="variant code"):
        tiny_model("cpu", n_kv_head=1).forward(idx, idx)


@pytest.mark.parametrize("argv, message", [
    (["--n_kv_head", "3"], "error: --n_head 4 is not a multiple of --n_kv_head 3"),
    (["--position", "rotary", "--n_embd", "12", "--n_head", "4"], "error: --position rotary rotates channel pairs"),
    (["--tie_embeddings", "maybe"], "error: --tie_embeddings expects true or false, got 'maybe'"),
])
def test_train_script_refuses_an_impossible_switch_in_one_line(tmp_path, argv, message):
    from tests.test_train import run_script

    result = run_script(*argv, "--out_dir", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
