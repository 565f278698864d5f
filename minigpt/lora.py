"""LoRA fine-tuning of a GPT: adding adapters, merging them into the weights, and the adapter-only checkpoint.

The layer itself (forward, backward, derivation) is minigpt/nn/lora.py. Here:

    add_adapters(model, LoraConfig(rank=8), base="gpt2-xl")   model.adapters: A, B per target, the base frozen
    merged(model)                                             a plain GPT with W + (alpha / r) A^T B^T
    save_adapters(model, directory)                           adapter_config.json + adapter_model.safetensors
    load_adapters(directory)                                  the base, checked, with the adapters on top

The adapter checkpoint is PEFT's: tensors named
`base_model.model.transformer.h.0.attn.c_attn.lora_A.weight`, and an
adapter_config.json with PEFT's keys (r, lora_alpha, target_modules, ...). It
names its base (`base_model_name_or_path`, a GPT-2 name or an absolute
directory) and, under "minigpt", a fingerprint of the base's weights: loading
it on another base is refused in one line, not trained on silently.
"""

import copy
import hashlib
import json
from pathlib import Path

import numpy as np

from minigpt.backend import to_device, to_host
from minigpt.errors import MinigptError
from minigpt.hub import ADAPTER_FILES
from minigpt.locate import resolve_checkpoint
from minigpt.model import GPT
from minigpt.nn.lora import LoraConfig, init_A, parse_targets
from minigpt.weights import load_pretrained, read_safetensors, write_safetensors

ADAPTER_CONFIG, ADAPTER_WEIGHTS = ADAPTER_FILES
PEFT_PREFIX = "base_model.model."  # PeftModel wraps the model: its tensors' names start so


def adapter_names(model, config: LoraConfig) -> list:
    """(A's name, B's name, the frozen weight's name) of every adapter, block by block."""
    return [(f"transformer.h.{i}.{m}.lora_A.weight", f"transformer.h.{i}.{m}.lora_B.weight",
             f"transformer.h.{i}.{m}.weight") for i in range(model.config.n_layer) for m in config.modules()]


def fingerprint(params: dict) -> str:
    """A short hash of the base weights: every name and shape, and 4096 evenly spaced values of each
    (in float32, so a float64 copy of the same file has the same fingerprint)."""
    h = hashlib.sha256()
    for name in sorted(params):
        p = params[name]
        step = max(1, p.size // 4096)
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(np.ascontiguousarray(to_host(p.reshape(-1)[::step]), dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def add_adapters(model, config: LoraConfig, base: str, seed=None):
    """Give `model` fresh adapters (A as PEFT, B = 0: the model's function is unchanged) and freeze its weights."""
    if config.rank < 1:
        raise MinigptError(f"--lora_rank must be at least 1 to add adapters, got {config.rank}")
    rng = np.random.default_rng(seed)
    for a_name, b_name, w_name in adapter_names(model, config):
        fan_in, fan_out = model.params[w_name].shape  # Conv1D layout: (in, out)
        model.adapters[a_name] = to_device(init_A(rng, config.rank, fan_in, model.dtype), model.device)
        model.adapters[b_name] = model.xp.zeros((fan_out, config.rank), dtype=model.dtype)
    model.lora = config
    model.lora_base = {"base": base, "fingerprint": fingerprint(model.params)}
    return model


def merged(model):
    """A plain GPT (no adapters; every weight trainable again) computing what `model` computes in eval mode:
    W' = W + (alpha / r) A^T B^T, (in, out) like W. It shares the unadapted arrays with `model`."""
    other = copy.copy(model)
    other.params = dict(model.params)
    for a_name, b_name, w_name in adapter_names(model, model.lora):
        A, B = model.adapters[a_name], model.adapters[b_name]
        other.params[w_name] = model.params[w_name] + (A.T @ B.T) * model.lora.scale
    other.lora, other.adapters, other.lora_base = None, {}, None
    other._caches = None
    return other


def save_adapters(model, directory) -> None:
    """adapter_config.json + adapter_model.safetensors (PEFT's files) into `directory`."""
    directory = Path(directory)
    tensors = {PEFT_PREFIX + name: np.ascontiguousarray(to_host(a)) for name, a in model.adapters.items()}
    write_safetensors(directory / ADAPTER_WEIGHTS, tensors, metadata={"format": "pt"})
    c = model.lora
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": model.lora_base["base"],
        "r": c.rank, "lora_alpha": c.alpha, "lora_dropout": c.dropout, "target_modules": list(c.targets),
        "fan_in_fan_out": True, "bias": "none", "inference_mode": False,
        "minigpt": {"base_fingerprint": model.lora_base["fingerprint"]},
    }
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def read_adapter_config(directory) -> dict:
    path = Path(directory) / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MinigptError(f"cannot read {path} ({err}); the adapter checkpoint is damaged") from None
    missing = [k for k in ("base_model_name_or_path", "r", "lora_alpha", "target_modules") if k not in config]
    if missing or config.get("peft_type", "LORA") != "LORA":
        raise MinigptError(f"{path} is not a LoRA adapter config (missing {', '.join(missing) or 'peft_type LORA'})")
    return config


def load_adapters(directory, dtype="float32", device="cpu"):
    """(model with the adapters on its base, the base's directory) from an adapter checkpoint `directory`."""
    directory = Path(directory)
    config = read_adapter_config(directory)
    base = config["base_model_name_or_path"]
    beside = directory / base  # a relative base: first beside the adapter, then from the working directory
    try:
        base_dir = resolve_checkpoint(beside if not Path(base).is_absolute() and beside.is_dir() else base,
                                      with_tokenizer=True)
    except MinigptError as err:
        raise MinigptError(f"{directory} adapts the base model {base}, which cannot be loaded: {err}") from None
    model = load_pretrained(GPT, base_dir, dtype=dtype, device=device)
    targets = config["target_modules"]
    lora = LoraConfig(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                      dropout=float(config.get("lora_dropout", 0.0)),
                      targets=parse_targets(",".join(targets) if isinstance(targets, list) else targets))
    expected = config.get("minigpt", {}).get("base_fingerprint")
    found = fingerprint(model.params)
    if expected is not None and found != expected:
        raise MinigptError(f"{directory} was trained on a different base: {base} now has fingerprint {found}, "
                           f"the adapter expects {expected}; give it the base it was trained on")
    tensors = {name.removeprefix(PEFT_PREFIX).replace(".default.", "."): t
               for name, t in read_safetensors(directory / ADAPTER_WEIGHTS).items()}
    for a_name, b_name, w_name in adapter_names(model, lora):
        fan_in, fan_out = model.params[w_name].shape
        for name, shape in ((a_name, (lora.rank, fan_in)), (b_name, (fan_out, lora.rank))):
            if name not in tensors or tuple(tensors[name].shape) != shape:
                got = "missing" if name not in tensors else f"shaped {tuple(tensors[name].shape)}"
                raise MinigptError(f"{directory / ADAPTER_WEIGHTS}: {name} is {got}, expected {shape}")
            model.adapters[name] = to_device(np.ascontiguousarray(tensors[name]), device, model.dtype)
    model.lora = lora
    model.lora_base = {"base": base, "fingerprint": found}
    return model, base_dir
