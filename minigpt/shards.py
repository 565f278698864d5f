"""Token shards: llm.c's `.bin` format, and a prepared dataset spread over many of them.

A shard is llm.c's token file (`dev/data/data_common.py: write_datafile`):

    header   256 little-endian int32: [0] magic 20240520, [1] version 1, [2] the token count
    tokens   uint16, little-endian

`write_shard` writes exactly those bytes for a vocabulary of at most 65,536
tokens, so our shards train in llm.c and llm.c's FineWeb shards train here.
A larger vocabulary keeps minigpt's own variant: header[3] = 4 and uint32
tokens (`minigpt.data.read_tokens` reads both; header[3] = 0, as llm.c leaves
it, means uint16).

A shard folder (written by scripts/prepare_data.py) holds `val_000000.bin ...`,
`train_000000.bin ...`, `meta.json` (which lists them) and `tokenizer/`. A glob
of shards (`fineweb10B/*.bin`) works too: names containing `val` are the
validation split, the rest training, and the tokenizer is GPT-2's (llm.c's
magic says GPT-2 tokens).

`TokenShards` presents a split's shards as one sequence of windows: a window of
T + 1 tokens never crosses a shard's end (as llm.c's loader), so shard i offers
n_i - T random start positions and (n_i - 1) // T non-overlapping windows.
"""

import glob
import json
from pathlib import Path

import numpy as np

from minigpt.atomic import write_file
from minigpt.data import HEADER_INTS, MAGIC, VERSION, PreparedData, read_tokens, token_dtype
from minigpt.errors import MinigptError
from minigpt.tokenizer import BPETokenizer, load_tokenizer

META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"  # in a folder whose preparation has not finished (minigpt.preparation)
MAX_SHARD_TOKENS = 2**31 - 1  # header[2] is an int32


def shard_header(count: int, vocab_size: int) -> np.ndarray:
    """llm.c's header for `count` tokens; header[3] = 4 marks minigpt's uint32 variant (vocabularies > 65,536)."""
    if not 0 <= count <= MAX_SHARD_TOKENS:
        raise ValueError(f"a shard holds at most {MAX_SHARD_TOKENS} tokens, got {count}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, count)
    if token_dtype(vocab_size).itemsize == 4:
        header[3] = 4
    return header


def write_shard(path, tokens, vocab_size: int) -> None:
    """Write `tokens` as one shard, atomically; byte for byte llm.c's file when they fit in uint16."""
    tokens = np.asarray(tokens)
    dtype = token_dtype(vocab_size).newbyteorder("<")
    header = shard_header(tokens.size, vocab_size)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            np.ascontiguousarray(tokens, dtype=dtype).tofile(f)  # no copy of a shard's buffer (200 MB at 100M tokens)

    write_file(path, write)


class TokenShards:
    """A split's shards (memmapped) read as windows of T + 1 tokens that never cross a shard's end."""

    def __init__(self, shards, names=()):
        self.shards = list(shards)
        self.names = list(names)
        self.size = sum(s.size for s in self.shards)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        """Token `index` of the split (shards in order), for the odd single-token read."""
        index = int(index)
        for shard in self.shards:
            if index < shard.size:
                return shard[index]
            index -= shard.size
        raise IndexError(index)

    # random windows: start positions 0..span-1, shard by shard
    def span(self, block_size: int) -> int:
        return sum(max(s.size - block_size, 0) for s in self.shards)

    def gather(self, starts, block_size: int) -> np.ndarray:
        """Windows of block_size + 1 tokens at global start positions in [0, span): (len(starts), T + 1) int64."""
        starts = np.asarray(starts, dtype=np.int64)
        spans = np.array([max(s.size - block_size, 0) for s in self.shards], dtype=np.int64)
        return self._read(starts, np.cumsum(spans), block_size)

    # non-overlapping windows: window k of shard i starts at k T
    def window_counts(self, block_size: int) -> np.ndarray:
        return np.array([max(s.size - 1, 0) // block_size for s in self.shards], dtype=np.int64)

    def windows(self, indices, block_size: int) -> np.ndarray:
        """The non-overlapping windows numbered `indices` (0..sum(window_counts)-1): (len, T + 1) int64."""
        indices = np.asarray(indices, dtype=np.int64)
        counts = self.window_counts(block_size)
        ends = np.cumsum(counts)
        shard = np.searchsorted(ends, indices, side="right")
        local = indices - (ends - counts)[shard]
        return self._gather_local(shard, local * block_size, block_size)

    def _read(self, starts, ends, block_size):
        shard = np.searchsorted(ends, starts, side="right")
        local = starts - (ends - np.diff(ends, prepend=0))[shard]
        return self._gather_local(shard, local, block_size)

    def _gather_local(self, shard, local, block_size):
        out = np.empty((len(local), block_size + 1), dtype=np.int64)
        for row, (i, start) in enumerate(zip(shard.tolist(), local.tolist())):
            out[row] = self.shards[i][start:start + block_size + 1]
        return out


def is_shard_source(data) -> bool:
    """Whether `--data` names shards: a folder with a shard meta.json, or a glob / a single .bin file."""
    if data is None:
        return False
    path = Path(data).expanduser()
    if path.is_dir():
        return _read_meta(path) is not None or (path / PROGRESS_FILE).is_file()
    return glob.has_magic(str(data)) or path.suffix == ".bin"


def _read_meta(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("shards"), dict) else None


def open_shards(data) -> PreparedData:
    """The dataset `--data` names (see `is_shard_source`): every shard memmapped, nothing read yet."""
    path = Path(data).expanduser()
    if path.is_dir():
        meta = _read_meta(path)
        if meta is None or not meta.get("complete"):
            raise MinigptError(f"--data {path} is only partly prepared; run scripts/prepare_data.py again to finish it")
        splits = {split: [path / name for name in meta["shards"].get(split, [])] for split in ("train", "val")}
        tokenizer = load_tokenizer(path / "tokenizer")
        folder = path
    else:
        files = sorted(Path(p) for p in glob.glob(str(path)))
        if not files:
            raise MinigptError(f"--data {data} matches no shard files")
        splits = {"val": [f for f in files if "val" in f.name], "train": [f for f in files if "val" not in f.name]}
        tokenizer = BPETokenizer.from_pretrained("gpt2")  # llm.c's magic 20240520: GPT-2 tokens
        folder = files[0].parent
        meta = {"name": folder.name, "vocab_size": tokenizer.vocab_size, "tokenizer": "gpt2", "source": str(data)}
    for split, names in splits.items():
        if not names:
            raise MinigptError(f"--data {data} has no {split} shard"
                               + (" (a validation shard has 'val' in its name, as llm.c's)" if split == "val" else ""))
    train, val = (TokenShards([read_tokens(f) for f in splits[s]], [f.name for f in splits[s]]) for s in ("train", "val"))
    top = max(int(np.max(s[:min(s.size, 1 << 16)], initial=0)) for s in train.shards + val.shards)
    if top >= tokenizer.vocab_size:
        raise MinigptError(f"--data {data} holds token id {top}, beyond the tokenizer's {tokenizer.vocab_size}")
    meta = {**meta, "train_tokens": train.size, "val_tokens": val.size}
    return PreparedData(folder, meta, tokenizer, train, val)
