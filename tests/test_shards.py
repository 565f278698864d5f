"""llm.c's shard format both ways, and shard folders and globs as training data (minigpt.shards)."""

import numpy as np
import pytest

from minigpt.data import HEADER_BYTES, read_tokens
from minigpt.errors import MinigptError
from minigpt.shards import TokenShards, is_shard_source, open_shards, write_shard


def llmc_write_datafile(filename, toks):
    """llm.c's dev/data/data_common.py write_datafile (model_desc "gpt-2"), as it is written there."""
    assert len(toks) < 2**31, "token count too large"  # ~2.1B tokens
    header = np.zeros(256, dtype=np.int32)
    header[0] = 20240520  # magic
    header[1] = 1  # version
    header[2] = len(toks)  # number of tokens after the 256*4 bytes of header (each 2 bytes as uint16)
    toks_np = np.array(toks, dtype=np.uint16)
    with open(filename, "wb") as f:
        f.write(header.tobytes())
        f.write(toks_np.tobytes())


@pytest.fixture
def tokens():
    return np.random.default_rng(0).integers(0, 50257, size=300)


def test_our_shard_is_byte_for_byte_llmc(tmp_path, tokens):
    llmc_write_datafile(tmp_path / "llmc.bin", tokens.tolist())
    write_shard(tmp_path / "ours.bin", tokens, 50257)
    assert (tmp_path / "ours.bin").read_bytes() == (tmp_path / "llmc.bin").read_bytes()


def test_llmc_shard_reads_back(tmp_path, tokens):
    llmc_write_datafile(tmp_path / "llmc.bin", tokens.tolist())
    back = read_tokens(tmp_path / "llmc.bin")
    assert back.dtype == np.uint16 and np.array_equal(back, tokens)


def test_large_vocabulary_keeps_uint32(tmp_path):
    ids = np.array([0, 70_000, 99_999, 5])
    write_shard(tmp_path / "big.bin", ids, 100_000)
    assert (tmp_path / "big.bin").stat().st_size == HEADER_BYTES + 4 * ids.size
    back = read_tokens(tmp_path / "big.bin")
    assert back.dtype == np.uint32 and np.array_equal(back, ids)


def test_token_shards_never_cross_a_shard_end():
    a, b = np.arange(10), np.arange(100, 107)
    shards = TokenShards([a, b])
    assert shards.span(3) == 7 + 4 and list(shards.window_counts(3)) == [3, 2]
    windows = shards.gather(np.arange(shards.span(3)), 3)
    assert windows[0].tolist() == [0, 1, 2, 3] and windows[6].tolist() == [6, 7, 8, 9]
    assert windows[7].tolist() == [100, 101, 102, 103] and windows[-1].tolist() == [103, 104, 105, 106]
    assert shards.windows(np.arange(5), 3).tolist() == [
        [0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9], [100, 101, 102, 103], [103, 104, 105, 106]]
    assert shards[12] == 102


def test_a_glob_of_llmc_shards_is_training_data(tmp_path, monkeypatch, tokens):
    monkeypatch.setattr("minigpt.shards.BPETokenizer.from_pretrained", lambda name: FakeGPT2())
    for name in ("fw_val_000000.bin", "fw_train_000001.bin", "fw_train_000002.bin"):
        llmc_write_datafile(tmp_path / name, tokens.tolist())
    pattern = str(tmp_path / "fw_*.bin")
    assert is_shard_source(pattern)
    data = open_shards(pattern)
    assert data.train.names == ["fw_train_000001.bin", "fw_train_000002.bin"] and data.val.names == ["fw_val_000000.bin"]
    assert data.train.size == 600 and data.meta["train_tokens"] == 600
    with pytest.raises(MinigptError, match="matches no shard files"):
        open_shards(str(tmp_path / "none_*.bin"))
    with pytest.raises(MinigptError, match="no val shard"):
        open_shards(str(tmp_path / "fw_train_*.bin"))


class FakeGPT2:
    vocab_size = 50257
    eot_token = 50256
