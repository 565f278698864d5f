"""The model's fields are said once, in GPTConfig: train.py's options, config.json's switches and the trainer derive them."""

import dataclasses

import pytest

from minigpt import GPTConfig
from minigpt.config import CPU_SHAPE, HELP, MODEL_FIELDS, TrainConfig, parse_args
from minigpt.errors import MinigptError
from minigpt.model import GPT
from minigpt.model_config import SWITCH_FIELDS, SWITCHES, check_switches
from minigpt.weights import config_from_hf, config_to_hf

# a value away from the default for every model field train.py takes
NOT_DEFAULT = {"n_layer": 3, "n_head": 6, "n_embd": 48, "block_size": 16, "dropout": 0.25, "bias": False,
               "norm": "rmsnorm", "activation": "swiglu", "position": "rotary", "tie_embeddings": False,
               "n_kv_head": 2, "mlp_hidden": 40, "rope_base": 500.0}


def test_train_options_are_gptconfig_fields_in_its_order():
    model = [f for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"]  # the tokenizer decides vocab_size
    train = dataclasses.fields(TrainConfig)[:len(model)]
    assert MODEL_FIELDS == TrainConfig.MODEL_FIELDS == tuple(f.name for f in model) == tuple(NOT_DEFAULT)
    for m, t in zip(model, train):
        assert (t.name, t.type) == (m.name, m.type)
        assert t.default == CPU_SHAPE.get(m.name, m.default)
        assert HELP[m.name] == m.metadata["help"] != ""


def test_every_switch_is_saved_in_config_json():
    assert SWITCH_FIELDS == (*SWITCHES, "n_kv_head", "mlp_hidden", "rope_base")
    assert SWITCHES["activation"][0] == GPTConfig().activation == "gelu_tanh"  # GPT-2's value first, the default
    config = GPTConfig(vocab_size=11, **NOT_DEFAULT)
    hf = config_to_hf(config)
    assert sorted(hf["minigpt"]) == sorted(SWITCH_FIELDS)
    assert config_from_hf(hf, "config.json") == config


def test_the_trainer_builds_the_model_the_options_describe():
    argv = [arg for name, value in NOT_DEFAULT.items() for arg in (f"--{name}", str(value))]
    cfg, _ = parse_args(argv)
    config = cfg.model_config(vocab_size=11)
    assert config == GPTConfig(vocab_size=11, **NOT_DEFAULT)
    assert GPT(config, seed=0).config is config


def test_a_switch_value_outside_its_choices_is_one_line():
    with pytest.raises(MinigptError, match=r"^--norm must be one of layernorm, rmsnorm, got 'batchnorm'$"):
        check_switches({"norm": "batchnorm"}, option=lambda name: f"--{name}")
    with pytest.raises(MinigptError, match="activation must be one of gelu_tanh, gelu, relu2, swiglu"):
        GPTConfig(activation="tanh")
