"""Reading and writing GPT-2 weights in Hugging Face's format (config.json + model.safetensors).

Two namings exist in the wild and both load:
  - the hub's own `gpt2*` repositories: `wte.weight`, `h.0.attn.c_attn.weight`, ...,
    plus causal-mask buffers `h.N.attn.bias` / `h.N.attn.masked_bias` (ignored), no `lm_head`;
  - `GPT2LMHeadModel.save_pretrained`: the same names under `transformer.`, and
    `lm_head.weight` absent or equal to `wte` (the head is tied).
Weights are Conv1D-shaped (in, out) in both, the layout minigpt uses, so nothing
is transposed. Every problem with a file is a one-line MinigptError.
"""

import json
import math
import re
from pathlib import Path

import numpy as np

from minigpt.atomic import write_file, write_text
from minigpt.backend import to_device, to_host
from minigpt.errors import MinigptError
from minigpt.model import GPTConfig, param_shapes

# activations that are exactly GPT-2's tanh approximation
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
MASK_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


def config_from_hf(hf: dict, source):
    """GPTConfig from a Hugging Face GPT-2 config.json dict, refusing what minigpt does not implement."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise MinigptError(f"{source}: model_type is {hf.get('model_type')!r}, only 'gpt2' is supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in TANH_GELU_NAMES:
        raise MinigptError(f"{source}: activation_function {act!r} is not supported (GPT-2 uses 'gelu_new')")
    missing = [k for k in ("n_layer", "n_head", "n_embd", "vocab_size") if k not in hf]
    if missing:
        raise MinigptError(f"{source}: missing {', '.join(missing)}")
    n_embd = hf["n_embd"]
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise MinigptError(f"{source}: n_inner {hf['n_inner']} is not supported (minigpt's MLP is 4*n_embd wide)")
    if not math.isclose(hf.get("layer_norm_epsilon", 1e-5), 1e-5):
        raise MinigptError(f"{source}: layer_norm_epsilon {hf['layer_norm_epsilon']} is not supported (only 1e-5)")
    if hf.get("tie_word_embeddings", True) is False:
        raise MinigptError(f"{source}: untied word embeddings are not supported (GPT-2 ties the head to wte)")
    return GPTConfig(
        n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=n_embd,
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)), vocab_size=hf["vocab_size"],
        dropout=hf.get("resid_pdrop", 0.0), bias=hf.get("bias", True),
    )


def config_to_hf(config) -> dict:
    """The config.json that transformers' GPT2LMHeadModel expects for this config."""
    eot = 50256 if config.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, when the vocabulary has it
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
        "n_positions": config.block_size, "n_ctx": config.block_size, "vocab_size": config.vocab_size,
        "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "initializer_range": 0.02, "bos_token_id": eot, "eos_token_id": eot,
        "tie_word_embeddings": True, "bias": config.bias,
    }


def read_safetensors(path) -> dict:
    """All tensors of a safetensors file as numpy arrays; a truncated or corrupt file is a MinigptError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise MinigptError(f"{path} is not a readable safetensors file ({err}); re-download or re-save it") from None


def normalize_keys(tensors: dict, source) -> dict:
    """Hub or save_pretrained naming -> `transformer.`-prefixed names, dropping mask buffers and a tied head."""
    out, head = {}, None
    for key, value in tensors.items():
        bare = key[len("transformer."):] if key.startswith("transformer.") else key
        if MASK_BUFFER.match(bare):
            continue
        if bare == "lm_head.weight":
            head = value
            continue
        out["transformer." + bare] = value
    wte = out.get("transformer.wte.weight")
    if head is not None and wte is not None and not (head.shape == wte.shape and np.array_equal(head, wte)):
        raise MinigptError(f"{source}: lm_head.weight differs from wte.weight; minigpt needs the tied head of GPT-2")
    return out


def load_pretrained(cls, directory, dtype="float32", device="cpu"):
    """A `cls` (GPT) model from a directory holding config.json + model.safetensors; see minigpt.loading."""
    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for f in (config_path, weights_path):
        if not f.is_file():
            raise MinigptError(f"{f} is missing: a GPT-2 checkpoint directory needs config.json and model.safetensors")
    try:
        hf = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MinigptError(f"{config_path} is not valid JSON ({err})") from None
    config = config_from_hf(hf, config_path)
    tensors = normalize_keys(read_safetensors(weights_path), weights_path)
    if not config.bias:  # save_pretrained wrote zero biases for the file format's sake
        tensors = {k: v for k, v in tensors.items() if not (k.endswith(".bias") and not v.any())}

    expected = param_shapes(config)
    unknown = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unknown:
        raise MinigptError(f"{weights_path}: unexpected tensor {unknown[0]} ({len(unknown)} unknown in all) for {config_path.name}'s model")
    if missing:
        raise MinigptError(f"{weights_path}: missing tensor {missing[0]} ({len(missing)} missing in all) for {config_path.name}'s model")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise MinigptError(f"{weights_path}: {name} has shape {tuple(tensors[name].shape)}, "
                               f"config.json implies {shape}; the config does not match the weights")

    model = cls(config, dtype=dtype, device=device, seed=0)
    for name in expected:
        model.params[name] = to_device(np.ascontiguousarray(tensors[name]), device, model.dtype)
    return model


def save_pretrained(model, directory):
    """config.json + model.safetensors, as GPT2LMHeadModel.save_pretrained writes them.

    Each file is written to a temporary name and renamed, so a crash never leaves a half-written file.
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(to_host(p)) for name, p in model.params.items()}
    if not model.config.bias:  # GPT-2's format always has biases: zeros are the same model
        full = param_shapes(GPTConfig(**{**model.config.to_dict(), "bias": True}))
        tensors.update({n: np.zeros(s, dtype=model.dtype) for n, s in full.items() if n not in tensors})
    write_file(directory / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_text(directory / "config.json", json.dumps(config_to_hf(model.config), indent=2) + "\n")
