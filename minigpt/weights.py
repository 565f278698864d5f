"""Reading and writing GPT-2 weights in Hugging Face's format (config.json + model.safetensors).

Two namings exist in the wild and both load:
  - the hub's own `gpt2*` repositories: `wte.weight`, `h.0.attn.c_attn.weight`, ...,
    plus causal-mask buffers `h.N.attn.bias` / `h.N.attn.masked_bias` (ignored), no `lm_head`;
  - `GPT2LMHeadModel.save_pretrained`: the same names under `transformer.`, and
    `lm_head.weight` absent or equal to `wte` (the head is tied).
Weights are Conv1D-shaped (in, out) in both, the layout minigpt uses, so nothing
is transposed. Every problem with a file is a one-line MinigptError.

A model with a switch away from GPT-2 (minigpt.model_config.SWITCHES, n_kv_head,
mlp_hidden) is not a GPT-2: its config.json says `"model_type": "minigpt"` (so
that transformers refuses it instead of loading a wrong model) and holds the
switches in a `"minigpt"` object; its extra tensors are named in Hugging Face's
style (`transformer.h.0.mlp.c_gate.weight`, `lm_head.weight`). A GPT-2 model's
files are exactly GPT-2's.
"""

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from minigpt import schema
from minigpt.atomic import write_file, write_text
from minigpt.backend import to_device, to_host
from minigpt.errors import MinigptError
from minigpt.model_config import SWITCH_FIELDS, GPTConfig, mlp_hidden, param_shapes

# activations that are exactly GPT-2's tanh approximation
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
MASK_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
MINIGPT_TYPE = "minigpt"  # config.json's model_type for a model with switches away from GPT-2
JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
CHECK_CHUNK = 1 << 20  # elements looked at per step when a sum is not finite (4 MB of float32)


# the fields of config.json minigpt reads, with their types and ranges (the switches: minigpt.model_config)
PDROP = schema.Num(0, 1, hi_open=True)
HF_CONFIG = schema.Obj({
    "model_type": schema.Str(), "activation_function": schema.Str(),
    "n_layer": schema.Int(1), "n_head": schema.Int(1), "n_embd": schema.Int(1), "vocab_size": schema.Int(1),
    "n_positions": schema.Int(1), "n_ctx": schema.Int(1), "n_inner": schema.Optional(schema.Int(1)),
    "resid_pdrop": PDROP, "embd_pdrop": PDROP, "attn_pdrop": PDROP,
    "layer_norm_epsilon": schema.Num(0), "bias": schema.Bool(), "tie_word_embeddings": schema.Bool(),
    MINIGPT_TYPE: schema.Obj(),
})


def config_from_hf(hf: dict, source):
    """GPTConfig from a Hugging Face GPT-2 config.json dict, refusing what minigpt does not implement."""
    if not isinstance(hf, dict):
        raise MinigptError(f"{source} holds a JSON {JSON_KINDS[type(hf)]}, not an object "
                           f"of GPT-2 settings ({{\"n_layer\": ..., ...}}); re-download it or rewrite it")
    schema.check(hf, HF_CONFIG, source, "re-download it, or fix that field")
    if hf.get("model_type") == MINIGPT_TYPE:
        return _config_from_minigpt(hf, source)
    if hf.get("model_type", "gpt2") != "gpt2":
        raise MinigptError(f"{source}: model_type is {hf.get('model_type')!r}, "
                           f"only 'gpt2' (and minigpt's own) is supported")
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


def _config_from_minigpt(hf: dict, source):
    """GPTConfig of a config.json minigpt wrote for a model with switches, refusing switches it does not know."""
    switches = hf.get("minigpt")
    if not isinstance(switches, dict):
        raise MinigptError(f"{source}: model_type 'minigpt' without its \"minigpt\" object of switches; "
                           f"re-save the model")
    unknown = sorted(set(switches) - set(SWITCH_FIELDS))
    if unknown:
        raise MinigptError(f"{source}: unknown switch {unknown[0]!r} (this minigpt knows {', '.join(SWITCH_FIELDS)}); "
                           f"the file needs a newer minigpt")
    missing = [k for k in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions") if k not in hf]
    if missing:
        raise MinigptError(f"{source}: missing {', '.join(missing)}")
    return GPTConfig(
        n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], block_size=hf["n_positions"],
        vocab_size=hf["vocab_size"], dropout=hf.get("resid_pdrop", 0.0), bias=hf.get("bias", True), **switches,
    )


def config_to_hf(config) -> dict:
    """The config.json that transformers' GPT2LMHeadModel expects for this config.

    A config with switches away from GPT-2 gets model_type "minigpt" and its
    switches under "minigpt": transformers refuses the file, minigpt loads it back exactly.
    """
    eot = 50256 if config.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, when the vocabulary has it
    hf = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
        "n_positions": config.block_size, "n_ctx": config.block_size, "vocab_size": config.vocab_size,
        "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "initializer_range": 0.02, "bos_token_id": eot, "eos_token_id": eot,
        "tie_word_embeddings": True, "bias": config.bias,
    }
    if not config.is_gpt2():
        hf.update({"model_type": MINIGPT_TYPE, "architectures": ["minigpt (not a GPT-2: see minigpt's README)"],
                   "tie_word_embeddings": config.tie_embeddings, "activation_function": config.activation,
                   "n_inner": mlp_hidden(config), "layer_norm_epsilon": 1e-5,
                   MINIGPT_TYPE: {name: getattr(config, name) for name in SWITCH_FIELDS}})
    return hf


# safetensors (https://github.com/huggingface/safetensors) is a flat file:
#     u64 little-endian N | N bytes of JSON header | data
# The header maps each tensor name to {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}
# (byte offsets into the data, which the tensors tile with no gap) plus an optional
# "__metadata__" of strings. Numbers are little-endian, arrays row-major.
SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
DTYPE_CODES = {np.dtype(t).newbyteorder("="): code for code, t in SAFETENSORS_DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


def read_safetensors(path) -> dict:
    """All tensors of a safetensors file as NumPy arrays; bfloat16 ones widened to float32.

    Each tensor's bytes are read once, straight into its own array: no bytes
    object of the whole file, and no memory map, whose pages would count in the
    process's memory a second time. A truncated or corrupt file is a MinigptError.
    """
    def unreadable(reason):
        return MinigptError(f"{path} is not a readable safetensors file ({reason}); re-download or re-save it")

    try:
        with open(path, "rb", buffering=0) as f:
            entries, data_start = _safetensors_layout(f, os.fstat(f.fileno()).st_size, unreadable)
            tensors = {}
            for name, (code, shape, begin, _) in entries.items():
                f.seek(data_start + begin)
                tensors[name] = _read_tensor(f, code, shape)
            return tensors
    except PermissionError as err:
        raise MinigptError(f"cannot read {path} ({err.strerror}); make it readable") from None
    except OSError as err:
        raise unreadable(err.strerror or err) from None


def _safetensors_layout(f, size: int, unreadable) -> tuple[dict, int]:
    """({name: (dtype code, shape, begin, end)}, where the data starts) of an open file, checked to tile the data."""
    if size < 8:
        raise unreadable(f"{size} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(f.read(8), "little")
    if n > min(size - 8, MAX_HEADER_BYTES):
        raise unreadable(f"a header of {n} bytes in a file of {size}: truncated")
    try:
        header = json.loads(_read_exactly(f, np.empty(n, np.uint8)).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise unreadable(f"the header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise unreadable("the header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    entries, end_of_previous = {}, 0
    for name, entry in sorted(header.items(), key=lambda kv: _begin_offset(kv[1])):
        try:
            code, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            itemsize = 2 if code == "BF16" else np.dtype(SAFETENSORS_DTYPES[code]).itemsize
        except (KeyError, TypeError, ValueError):
            code = None
        if code is None or not all(isinstance(v, int) and v >= 0 for v in (*shape, begin, end)):
            raise unreadable(f"tensor {name!r} has a malformed entry {str(entry)[:200]}")
        if begin != end_of_previous or end - begin != math.prod(shape) * itemsize:
            raise unreadable(f"tensor {name!r} has data_offsets {[begin, end]}, not where the {shape} {code} "
                             f"tensor after byte {end_of_previous} belongs")
        entries[name], end_of_previous = (code, shape, begin, end), end
    if end_of_previous != data_size:
        raise unreadable(f"the tensors need {end_of_previous} bytes of data, the file holds {data_size}"
                         + (": truncated" if end_of_previous > data_size else ""))
    return entries, 8 + n


def _begin_offset(entry) -> int:
    """Where an entry's data starts (0 for a malformed entry, which the caller then reports)."""
    try:
        return int(entry["data_offsets"][0])
    except (KeyError, TypeError, ValueError, IndexError):
        return 0


def _read_tensor(f, code: str, shape: tuple) -> np.ndarray:
    """The next tensor in file `f` as a native-endian array, from its little-endian bytes.

    bfloat16 is the top half of a float32 (sign, the same 8 exponent bits, 7 of
    the 23 mantissa bits), so shifting its 16-bit pattern left by 16 is the
    exact float32: f32_bits = bf16_bits << 16.
    """
    count = math.prod(shape)
    if code == "BF16":
        bits = _read_exactly(f, np.empty(count, "<u2")).astype(np.uint32)  # (count,) the float32 result's memory
        bits <<= 16
        return bits.view(np.float32).reshape(shape)
    dtype = np.dtype(SAFETENSORS_DTYPES[code])
    return _read_exactly(f, np.empty(count, dtype)).astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def _read_exactly(f, out: np.ndarray) -> np.ndarray:
    """Fill `out` with the next out.nbytes bytes of unbuffered file `f` (a read may return fewer)."""
    view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
    while done < out.nbytes:
        got = f.readinto(view[done:])
        if not got:
            raise OSError(f"the file ended {out.nbytes - done} bytes early")
        done += got
    return out


def write_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """Write `tensors` ({name: array of either backend}) and `metadata` ({str: str}) as a safetensors file.

    The header is computed from shapes and dtypes alone, then each array's bytes
    go straight from its memory to the file, one tensor at a time: no bytes object
    of the whole set (which `safetensors.numpy.save_file` built up to at least
    safetensors 0.4.5, doubling the memory of a save; 0.8.0 no longer does).
    The file is written under a temporary name and renamed (minigpt.atomic).
    Tensors are laid out largest element first, then by name (as the safetensors
    library does), so every tensor starts on a multiple of its element size.
    """
    order = sorted(tensors, key=lambda name: (-tensors[name].dtype.itemsize, name))
    header = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        dtype = tensors[name].dtype
        if dtype.newbyteorder("=") not in DTYPE_CODES:
            raise MinigptError(f"cannot write tensor {name} of dtype {dtype} to safetensors")
        nbytes = math.prod(tensors[name].shape) * dtype.itemsize
        header[name] = {"dtype": DTYPE_CODES[dtype.newbyteorder("=")], "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for name in order:
                array = np.ascontiguousarray(to_host(tensors[name]))  # a view when already C-contiguous
                if array.dtype.byteorder == ">":
                    array = array.astype(array.dtype.newbyteorder("<"))
                f.write(array.reshape(-1).view(np.uint8))  # (nbytes,) written from the array's own memory

    write_file(path, write)


def check_finite(tensors: dict, source) -> None:
    """A MinigptError naming the first floating-point tensor that holds NaN or infinity.

    Fast path, no temporary: NaN and infinity survive any sum (inf + x = inf,
    inf - inf = NaN, NaN + x = NaN), so a finite sum means every element is
    finite. Only a non-finite sum (or one that overflowed) is looked at element by
    element, a chunk at a time, to say what and where.
    """
    for name, tensor in tensors.items():
        if tensor.dtype.kind != "f":
            continue
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum only sends us to the slow path
            total = tensor.sum(dtype=np.float64 if tensor.dtype == np.float64 else np.float32)
        if np.isfinite(total):
            continue
        flat = tensor.reshape(-1)
        for start in range(0, flat.size, CHECK_CHUNK):
            bad = np.flatnonzero(~np.isfinite(flat[start:start + CHECK_CHUNK]))
            if bad.size:
                index = np.unravel_index(start + int(bad[0]), tensor.shape)
                raise MinigptError(f"{source}: tensor {name} holds {flat[start + bad[0]]} at index {tuple(map(int, index))}; "
                                   f"the weights are damaged (a diverged run, or a bad conversion): use another checkpoint")


def normalize_keys(tensors: dict, source, tied=True) -> dict:
    """Hub or save_pretrained naming -> `transformer.`-prefixed names, dropping mask buffers and a tied head.

    An untied head (`tied` false) keeps its own name, `lm_head.weight`.
    """
    out, head = {}, None
    for key, value in tensors.items():
        bare = key[len("transformer."):] if key.startswith("transformer.") else key
        if MASK_BUFFER.match(bare):
            continue
        if bare == "lm_head.weight":
            head = value
            if not tied:
                out[bare] = value
            continue
        out["transformer." + bare] = value
    wte = out.get("transformer.wte.weight")
    if tied and head is not None and wte is not None and not (head.shape == wte.shape and np.array_equal(head, wte)):
        raise MinigptError(f"{source}: lm_head.weight differs from wte.weight; minigpt needs the tied head of GPT-2")
    return out


def load_pretrained(cls, directory, dtype="float32", device="cpu"):
    """A `cls` (GPT) model from a directory holding config.json + model.safetensors; see minigpt.loading."""
    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for f in (config_path, weights_path):
        if not f.is_file() and not f.exists():
            raise MinigptError(f"{f} is missing: a GPT-2 checkpoint directory needs config.json and model.safetensors")
    try:
        hf = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MinigptError(f"{config_path} is not valid JSON ({err})") from None
    except OSError as err:  # not "missing": unreadable (permissions), or a directory in its place
        raise MinigptError(f"cannot read {config_path} ({err.strerror or err}); make it a readable file") from None
    config = config_from_hf(hf, config_path)
    tensors = normalize_keys(read_safetensors(weights_path), weights_path, tied=config.tie_embeddings)
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
    check_finite(tensors, weights_path)

    model = cls(config, dtype=dtype, device=device, seed=0, init=False)  # no random weights: the file's fill it
    for name in expected:
        model.params[name] = to_device(np.ascontiguousarray(tensors.pop(name)), device, model.dtype)
    return model


def save_pretrained(model, directory):
    """config.json + model.safetensors, as GPT2LMHeadModel.save_pretrained writes them (a model with switches
    away from GPT-2: the same layout, its config.json marked "minigpt", see config_to_hf).

    Each file is written to a temporary name and renamed, so a crash never leaves a half-written file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(to_host(p)) for name, p in model.params.items()}
    if not model.config.bias:  # GPT-2's format always has biases: zeros are the same model
        full = param_shapes(GPTConfig(**{**model.config.to_dict(), "bias": True}))
        tensors.update({n: np.zeros(s, dtype=model.dtype) for n, s in full.items() if n not in tensors})
    write_safetensors(directory / "model.safetensors", tensors, metadata={"format": "pt"})
    write_text(directory / "config.json", json.dumps(config_to_hf(model.config), indent=2) + "\n")
