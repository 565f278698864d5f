"""Loading Hugging Face GPT-2 files: both namings, downloads by name, and one-line errors for bad files."""

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

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
