"""Hugging Face GPT-2 files: both namings, downloads by name, one-line errors for bad files and weights,
bfloat16, and the streaming safetensors writer and reader."""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from minigpt import weights
from minigpt.errors import MinigptError
from minigpt.model import GPT

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def hub_copy(tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "gpt2_tiny_hub", d)
    return d


def rewrite(directory, edit):
    tensors = load_file(str(directory / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def edit_config(directory, **changes):
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def expect_error(path, match):
    with pytest.raises(MinigptError, match=match) as info:
        GPT.from_pretrained(path)
    assert "\n" not in str(info.value)


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nope", "no checkpoint at")


def test_missing_file(hub_copy):
    (hub_copy / "model.safetensors").unlink()
    expect_error(hub_copy, "model.safetensors is missing")


def test_unknown_key(hub_copy):
    rewrite(hub_copy, lambda t: t.update({"h.0.attn.extra": np.zeros(3, np.float32)}))
    expect_error(hub_copy, "unexpected tensor transformer.h.0.attn.extra")


def test_missing_key(hub_copy):
    rewrite(hub_copy, lambda t: t.pop("ln_f.bias"))
    expect_error(hub_copy, "missing tensor transformer.ln_f.bias")


def test_wrong_shape_means_config_mismatch(hub_copy):
    edit_config(hub_copy, vocab_size=40)
    expect_error(hub_copy, "does not match the weights")


def test_unsupported_activation(hub_copy):
    edit_config(hub_copy, activation_function="relu")
    expect_error(hub_copy, "activation_function 'relu' is not supported")


def test_truncated_file(hub_copy):
    data = (hub_copy / "model.safetensors").read_bytes()
    (hub_copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    expect_error(hub_copy, "not a readable safetensors file")


def test_corrupt_config(hub_copy):
    (hub_copy / "config.json").write_text("{not json")
    expect_error(hub_copy, "not valid JSON")


def test_untied_head_is_refused(hub_copy):
    rewrite(hub_copy, lambda t: t.update({"lm_head.weight": t["wte.weight"] + 1.0}))
    expect_error(hub_copy, "lm_head.weight differs")


def test_tied_head_copy_is_accepted(hub_copy):
    rewrite(hub_copy, lambda t: t.update({"lm_head.weight": t["wte.weight"].copy()}))
    assert GPT.from_pretrained(hub_copy).config.vocab_size == 37


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A local HTTP server laid out like the hub: /<repo>/resolve/main/<file>."""
    root = tmp_path / "hub"
    shutil.copytree(FIXTURES / "gpt2_tiny_hub", root / "gpt2" / "resolve" / "main")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("MINIGPT_CHECKPOINTS_DIR", str(tmp_path / "checkpoints"))
    yield tmp_path / "checkpoints"
    server.shutdown()


def test_name_downloads_from_hf_endpoint_once(local_hub):
    model = GPT.from_pretrained("gpt2")
    assert model.config.vocab_size == 37
    assert (local_hub / "gpt2" / "model.safetensors").is_file()
    assert GPT.from_pretrained("gpt2").config.n_layer == 2  # second time: from checkpoints/gpt2/


def test_offline_download_lists_every_file_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    monkeypatch.setenv("MINIGPT_CHECKPOINTS_DIR", str(tmp_path / "checkpoints"))
    with pytest.raises(MinigptError, match=r"could not download .*yourself and save each as shown") as info:
        GPT.from_pretrained("gpt2-medium")
    for name in ("config.json", "model.safetensors"):
        url, dest = f"http://127.0.0.1:9/gpt2-medium/resolve/main/{name}", tmp_path / "checkpoints" / "gpt2-medium" / name
        assert f"{url} as {dest}" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no empty checkpoints/gpt2-medium/, no .part file


def test_offline_checkpoint_name_lists_the_tokenizer_files_too(tmp_path, monkeypatch):
    """`--checkpoint gpt2` offline: one message naming all four files and where each goes."""
    from minigpt.loading import load_checkpoint

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("MINIGPT_CHECKPOINTS_DIR", str(tmp_path / "checkpoints"))
    with pytest.raises(MinigptError) as info:
        load_checkpoint("gpt2")
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt"):
        assert f"/gpt2/resolve/main/{name} as {tmp_path / 'checkpoints' / 'gpt2' / name}" in str(info.value)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_downloaded_file_is_kept_when_a_later_one_fails(local_hub, tmp_path):
    (tmp_path / "hub" / "gpt2" / "resolve" / "main" / "model.safetensors").unlink()  # the server lacks one file
    with pytest.raises(MinigptError, match="could not download") as info:
        GPT.from_pretrained("gpt2")
    assert (local_hub / "gpt2" / "config.json").is_file()  # complete: the next try fetches only the rest
    assert "config.json as" not in str(info.value) and "model.safetensors as" in str(info.value)


# -- loads that refuse bad weights ------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_at_load_naming_the_tensor(hub_copy, bad):
    def poison(t):
        t["h.1.mlp.c_fc.weight"][3, 5] = bad
    rewrite(hub_copy, poison)
    expect_error(hub_copy, rf"tensor transformer\.h\.1\.mlp\.c_fc\.weight holds {bad} at index \(3, 5\)")


def test_check_finite_finds_a_nan_past_the_first_chunk_and_passes_large_finite_values():
    big = np.full(3 * weights.CHECK_CHUNK + 7, np.finfo(np.float32).max, dtype=np.float32)  # its sum overflows
    weights.check_finite({"big": big, "ids": np.arange(4)}, "src")
    big[2 * weights.CHECK_CHUNK + 1] = np.nan
    with pytest.raises(MinigptError, match=rf"src: tensor big holds nan at index \({2 * weights.CHECK_CHUNK + 1},\)"):
        weights.check_finite({"big": big}, "src")


def test_check_finite_makes_no_copy_of_a_tensor():
    tensor = np.random.default_rng(0).standard_normal(4_000_000).astype(np.float32)  # 16 MB
    tracemalloc.start()
    weights.check_finite({"w": tensor}, "src")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < tensor.nbytes / 100


@pytest.mark.parametrize("text, kind", [("[1, 2]", "array"), ("12", "number"), ('"gpt2"', "string"), ("null", "null")])
def test_config_that_is_not_an_object_is_one_line(hub_copy, text, kind):
    (hub_copy / "config.json").write_text(text)
    expect_error(hub_copy, f"config.json holds a JSON {kind}, not an object")


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """The top 16 bits of each float32 (bfloat16 by truncation; the test's values are exact in it)."""
    return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype("<u2")


def write_by_hand(path, tensors: dict, codes: dict) -> None:
    """A safetensors file built byte by byte: u64 header length, JSON header, raw little-endian data."""
    header, data, offset = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, raw in tensors.items():
        blob = raw.tobytes()
        header[name] = {"dtype": codes[name], "shape": list(raw.shape), "data_offsets": [offset, offset + len(blob)]}
        data, offset = data + blob, offset + len(blob)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def test_bfloat16_weights_load_as_float32(hub_copy):
    original = load_file(str(hub_copy / "model.safetensors"))
    original["h.0.ln_1.weight"][:3] = [1.0, -2.5, 3.0e38]  # bfloat16's range is float32's
    # values bfloat16 holds exactly: the float32s with their low 16 bits cleared
    exact = {name: (np.asarray(t, np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32) for name, t in original.items()}
    write_by_hand(hub_copy / "model.safetensors", {n: to_bfloat16_bits(t) for n, t in exact.items()},
                  {n: "BF16" for n in exact})
    model = GPT.from_pretrained(hub_copy)
    for name, t in exact.items():
        if "attn.bias" in name or "attn.masked_bias" in name:
            continue  # the hub's causal-mask buffers, which minigpt ignores
        loaded = model.params["transformer." + name]
        assert loaded.dtype == np.float32
        np.testing.assert_array_equal(loaded, t)
    assert not np.array_equal(exact["wte.weight"], original["wte.weight"])  # the test did drop mantissa bits


def test_bfloat16_bit_patterns_widen_exactly(tmp_path):
    bits = np.array([0x0000, 0x8000, 0x3F80, 0xC020, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x7F7F], dtype="<u2")
    write_by_hand(tmp_path / "x.safetensors", {"b": bits.reshape(3, 3), "f": np.arange(2, dtype="<f4")},
                  {"b": "BF16", "f": "F32"})
    loaded = weights.read_safetensors(tmp_path / "x.safetensors")
    assert loaded["b"].dtype == np.float32 and loaded["b"].shape == (3, 3)
    assert loaded["b"].reshape(-1).view(np.uint32).tolist() == [int(b) << 16 for b in bits]
    assert loaded["b"][0, 2] == 1.0 and loaded["b"][1, 0] == -2.5 and loaded["b"][2, 1] == 2.0**-133
    np.testing.assert_array_equal(loaded["f"], [0.0, 1.0])


def test_float16_weights_load_as_float32(hub_copy):
    rewrite(hub_copy, lambda t: t.update({n: v.astype(np.float16) for n, v in t.items()}))
    halves = load_file(str(hub_copy / "model.safetensors"))
    model = GPT.from_pretrained(hub_copy)
    np.testing.assert_array_equal(model.params["transformer.wte.weight"], halves["wte.weight"].astype(np.float32))


DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16,
          np.uint32, np.uint64, np.bool_]


def sample_tensors():
    rng = np.random.default_rng(0)
    tensors = {f"t.{np.dtype(d).name}": (rng.standard_normal((3, 5)) * 100).astype(d) for d in DTYPES}
    tensors["scalar"] = np.array(2.5, dtype=np.float32)
    tensors["empty"] = np.zeros((0, 4), dtype=np.float32)
    tensors["strided"] = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]  # not contiguous
    tensors["big_endian"] = np.arange(6, dtype=">f4").reshape(2, 3)
    return tensors


def test_streamed_file_round_trips_through_the_safetensors_package(tmp_path):
    tensors = sample_tensors()
    path = tmp_path / "x.safetensors"
    weights.write_safetensors(path, tensors, metadata={"format": "pt", "step": "12"})
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype.newbyteorder("=") and loaded[name].shape == t.shape
        assert loaded[name].tobytes() == t.astype(t.dtype.newbyteorder("=")).tobytes()  # bit-exact
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"format": "pt", "step": "12"}
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, then renamed


def test_reader_reads_what_the_safetensors_package_writes(tmp_path):
    tensors = {n: t.astype(t.dtype.newbyteorder("=")) for n, t in sample_tensors().items()}
    save_file({n: np.ascontiguousarray(t) for n, t in tensors.items()}, str(tmp_path / "x.safetensors"))
    loaded = weights.read_safetensors(tmp_path / "x.safetensors")
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and loaded[name].tobytes() == np.ascontiguousarray(t).tobytes()
        assert loaded[name].flags.writeable  # an array of its own, not a read-only view of the mapped file


def test_writing_streams_without_a_copy_of_the_tensors(tmp_path):
    tensors = {f"w{i}": np.ones((1024, 1024), dtype=np.float32) for i in range(16)}  # 64 MB
    total = sum(t.nbytes for t in tensors.values())
    tracemalloc.start()
    weights.write_safetensors(tmp_path / "x.safetensors", tensors)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < total / 100, f"saving {total} bytes allocated {peak} bytes at peak"
    assert (tmp_path / "x.safetensors").stat().st_size > total


def test_reading_allocates_the_tensors_once(tmp_path):
    tensors = {f"w{i}": np.ones((1024, 1024), dtype=np.float32) for i in range(16)}  # 64 MB
    total = sum(t.nbytes for t in tensors.values())
    save_file(tensors, str(tmp_path / "x.safetensors"))
    tracemalloc.start()
    loaded = weights.read_safetensors(tmp_path / "x.safetensors")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(loaded) == 16 and peak < 1.05 * total


def test_reading_adds_the_tensors_to_the_process_memory_once(tmp_path):
    """Peak RSS, which also counts the pages of a memory-mapped file, in a fresh process."""
    save_file({f"w{i}": np.ones((1024, 1024), dtype=np.float32) for i in range(32)}, str(tmp_path / "x.safetensors"))
    script = ("import resource, sys; from minigpt.weights import read_safetensors; "
              "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024; before = peak(); "
              "t = read_safetensors(sys.argv[1]); print(peak() - before, sum(a.nbytes for a in t.values()))")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.safetensors")], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    added, total = map(int, out.stdout.split())
    assert total == 128 * 2**20 and added < 1.2 * total, f"reading {total} bytes added {added} bytes of RSS"


def header_of(text: str) -> bytes:
    return len(text).to_bytes(8, "little") + text.encode()


@pytest.mark.parametrize("content, reason", [
    (b"", "0 bytes, shorter than the 8-byte header length"),
    (b"\x10\x00\x00", "shorter than the 8-byte header length"),
    ((500).to_bytes(8, "little") + b"{}", "a header of 500 bytes in a file of 10: truncated"),
    (header_of("{not json"), "the header is not JSON"),
    (header_of("[1]"), "the header is not a JSON object"),
    (header_of('{"a": {"dtype": "Q8", "shape": [1], "data_offsets": [0, 1]}}') + b"x", "malformed entry"),
    (header_of('{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}') + b"xxxx", "malformed entry"),
    (header_of('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}') + b"xxxx", "truncated"),
    (header_of('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}') + b"xxxxyy", "the file holds 6"),
    (header_of('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}') + b"xxxxyyyy", "not where"),
    (header_of('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}') + b"xxxx", "not where"),
])
def test_corrupt_files_are_one_line_errors(tmp_path, content, reason):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(MinigptError, match="is not a readable safetensors file") as info:
        weights.read_safetensors(path)
    assert reason in str(info.value) and "\n" not in str(info.value)
