"""The data pipeline: a text corpus -> tokens -> `train.bin` / `val.bin` -> random batches.

A prepared dataset is a folder `data/<corpus>_<tokenizer>/` (`pydoc_char`,
`notes_bpe4096`, `notes_gpt2`; a checkpoint's own tokenizer adds 8 hex digits of
its fingerprint, `notes_char-1f2e3d4c`, unless it is the one the plain folder
holds), so two runs on one text with different tokenizers never share a folder.
It holds

    train.bin, val.bin   a 1024-byte header, then the tokens (uint16, or uint32 when
                         the vocabulary has more than 65,536 entries)
    meta.json            tokenizer kind, vocabulary size, source and its sha256
    tokenizer/           the tokenizer's own files (read back with `load_tokenizer`)

The header is 256 little-endian int32: magic 20240520, version 1, the token count
and the bytes per token (2 or 4); the rest is zero. With uint16 tokens this is
llm.c's token-file layout. The last 10% of the tokens is the validation split.

Training reads the files through `np.memmap`, so a corpus never has to fit in
memory: a batch is B random windows of T + 1 consecutive tokens, whose first T
are the inputs and last T (shifted by one) the targets.
"""

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minigpt import schema
from minigpt.atomic import recover_dir, write_dir, write_file
from minigpt.download import download, sha256_of
from minigpt.errors import MinigptError
from minigpt.paths import data_dir
from minigpt.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
VAL_FRACTION = 0.1
PREPARE_VERSION = 2  # bumped whenever prepare() would write different files for the same inputs

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

DEFAULT_DATASET = "pydoc"
DATASETS = ("pydoc", "shakespeare")


# ---------------------------------------------------------------------------
# Token files


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids below 65,536 (GPT-2's 50,257 fit); larger vocabularies need uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def write_tokens(path, tokens, vocab_size: int) -> None:
    """Write `tokens` with its header to `path` atomically (temporary file, then rename)."""
    path = Path(path)
    dtype = token_dtype(vocab_size)
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got {tokens.min()}..{tokens.max()}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:4] = (MAGIC, VERSION, tokens.size, dtype.itemsize)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype(dtype.newbyteorder("<")).tobytes())

    write_file(path, write)


def read_tokens(path) -> np.memmap:
    """The tokens of a file written by `write_tokens`, as a read-only memmap."""
    path = Path(path)
    rebuild = rebuild_advice(path.parent)
    if not path.is_file():
        raise MinigptError(f"token file {path} does not exist; {rebuild}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise MinigptError(f"token file {path} is too short to hold a header; {rebuild}")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, count, itemsize = (int(v) for v in header[:4])
    itemsize = itemsize or 2  # llm.c leaves header[3] zero: uint16 tokens
    if magic != MAGIC or version != VERSION or itemsize not in (2, 4):
        raise MinigptError(f"{path} is not a minigpt token file (bad magic, version or dtype); {rebuild}")
    if size != HEADER_BYTES + count * itemsize:
        raise MinigptError(f"{path} should hold {count} tokens but has {size} bytes (truncated?); {rebuild}")
    dtype = np.dtype("<u2" if itemsize == 2 else "<u4")
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


# ---------------------------------------------------------------------------
# Corpora


@dataclass
class Corpus:
    """A named text: `name` names its data folder, `source` says where it came from."""

    name: str
    text: str
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def pydoc_corpus() -> Corpus:
    """The Python documentation topics that ship inside the standard library (no network needed)."""
    import platform

    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    return Corpus("pydoc", text, f"pydoc_data.topics (Python {platform.python_version()})")


def shakespeare_corpus() -> Corpus:
    """Tiny Shakespeare, downloaded once into data/shakespeare/input.txt and checked by sha256.

    MINIGPT_SHAKESPEARE_URL and MINIGPT_SHAKESPEARE_SHA256 override the source
    (the tests serve a small file from a local HTTP server).
    """
    url = os.environ.get("MINIGPT_SHAKESPEARE_URL", SHAKESPEARE_URL)
    sha256 = os.environ.get("MINIGPT_SHAKESPEARE_SHA256", SHAKESPEARE_SHA256)
    path = data_dir() / "shakespeare" / "input.txt"
    if path.is_file() and sha256_of(path) != sha256:
        raise MinigptError(f"{path} does not have the expected sha256 {sha256}; delete it to download it again")
    if path.is_file():  # downloaded by an earlier run, or copied there by hand: its sha256 is what vouches for it
        return Corpus("shakespeare", read_text_file(path), f"{path} (sha256 {sha256[:12]}...)")
    download(url, path, sha256=sha256)
    return Corpus("shakespeare", read_text_file(path), url)


def read_text_file(path, what="file") -> str:
    """The UTF-8 text of `path`; a missing, unreadable or non-UTF-8 file is a one-line MinigptError.

    `what` names the file in the message ("prompt file"); a file that is not
    UTF-8 is reported with the offending byte and its line.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MinigptError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise MinigptError(f"{what} {path} is a directory: give a text file") from None
    except OSError as err:
        raise MinigptError(f"cannot read {what} {path} ({err.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise MinigptError(
            f"{what} {path} is not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} (line {line}); "
            "convert it to UTF-8 first"
        ) from None


BINARY_PROBE_BYTES = 8000  # git's test for a binary file: a NUL byte among its first 8000 bytes


def is_binary(path) -> bool:
    """True for a file with a NUL byte near its start (compiled code, images, archives); text never has one."""
    with open(path, "rb") as f:
        return b"\0" in f.read(BINARY_PROBE_BYTES)


def text_files(folder: Path) -> list:
    """The text files under `folder`, in sorted order, and one line on stdout naming what was skipped.

    Hidden files and folders are left out silently, as always. Files under
    `__pycache__` and binary files (`is_binary`) are left out and counted: a
    folder of Python sources holds both. A file that is neither binary nor UTF-8
    is text in another encoding and stays an error (read_text_file says where),
    so no text is dropped unseen.
    """
    files, cached, binary = [], 0, []
    for p in sorted(folder.rglob("*")):
        parts = p.relative_to(folder).parts
        if not p.is_file() or any(part.startswith(".") for part in parts):
            continue
        if "__pycache__" in parts[:-1]:
            cached += 1
        elif is_binary(p):
            binary.append(p.relative_to(folder).as_posix())
        else:
            files.append(p)
    if cached or binary:
        why = ([f"{cached} under __pycache__"] if cached else []) + (
            [f"{len(binary)} binary ({', '.join(binary[:3])}{', ...' if len(binary) > 3 else ''})"] if binary else [])
        print(f"--data {folder}: skipped {cached + len(binary)} non-text file(s): {'; '.join(why)}")
    return files


def path_corpus(path) -> Corpus:
    """A UTF-8 text file, or every text file under a directory (see `text_files`), in sorted order."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MinigptError(f"--data {path} does not exist; give a UTF-8 text file or a directory of them")
    if not (path.is_file() or path.is_dir()):  # a FIFO or a device would block the read forever, or never end
        raise MinigptError(f"--data {path} is neither a regular file nor a directory (a pipe, socket or device); "
                           f"give a UTF-8 text file or a directory of them")
    if path.is_dir():
        files = text_files(path)
        if not files:
            raise MinigptError(f"--data {path} is a directory with no text files in it")
    elif is_binary(path):
        raise MinigptError(f"--data {path} is a binary file (it holds NUL bytes), not text; give a UTF-8 text file")
    else:
        files = [path]
    text = "\n\n".join(read_text_file(f) for f in files)
    if not text.strip():
        raise MinigptError(f"--data {path} holds no text (empty or only whitespace)")
    stem = path.resolve().name if path.is_dir() else path.stem  # corpus.txt -> data/corpus_<tokenizer>/
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "data"
    return Corpus(name, text, str(path.resolve()))


def load_corpus(dataset: str | None = None, data: str | None = None) -> Corpus:
    """The corpus a run asks for: `--data PATH` wins over `--dataset NAME` (default pydoc)."""
    if data is not None:
        return path_corpus(data)
    dataset = dataset or DEFAULT_DATASET
    if dataset == "pydoc":
        return pydoc_corpus()
    if dataset == "shakespeare":
        return shakespeare_corpus()
    raise MinigptError(f"unknown --dataset {dataset!r}: use one of {', '.join(DATASETS)}, or --data PATH for your own text")


# ---------------------------------------------------------------------------
# Tokenizers named on the command line


def parse_tokenizer_spec(spec: str) -> tuple[str, int | None]:
    """"char" -> ("char", None), "gpt2" -> ("gpt2", None), "bpe:N" -> ("bpe", N)."""
    if spec in ("char", "gpt2"):
        return spec, None
    if spec.startswith("bpe:"):
        try:
            size = int(spec[4:])
        except ValueError:
            size = -1
        if size <= 256:
            raise MinigptError(f"--tokenizer {spec}: N must be an integer above 256 (the byte alphabet), e.g. bpe:1024")
        return "bpe", size
    raise MinigptError(f"unknown --tokenizer {spec!r}: use char, gpt2 or bpe:N (train a BPE of N tokens)")


def build_tokenizer(spec: str, text: str, train_text: str):
    """The tokenizer named by `spec`: char over all of `text`, bpe:N trained on `train_text`."""
    kind, size = parse_tokenizer_spec(spec)
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "gpt2":
        return BPETokenizer.from_pretrained("gpt2")
    return note_short_vocabulary(BPETokenizer.train(train_text, size), spec)


def note_short_vocabulary(tokenizer, spec: str):
    """Say so when the text ran out of pairs to merge before bpe:N reached its N tokens."""
    wanted = parse_tokenizer_spec(spec)[1]
    if tokenizer.vocab_size < wanted:
        print(f"note: --tokenizer {spec}: the text has only enough repeated pairs for {tokenizer.vocab_size} tokens, "
              f"not {wanted}; the vocabulary has {tokenizer.vocab_size} (more text gives more)")
    return tokenizer


def tokenizer_label(tokenizer) -> str:
    """A short name for a tokenizer, used in data folder names: char, gpt2 or bpeN."""
    if isinstance(tokenizer, CharTokenizer):
        return "char"
    return "gpt2" if tokenizer.vocab_size == 50257 else f"bpe{tokenizer.vocab_size}"


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over the files `tokenizer.save` writes: equal fingerprints mean equal tokenizers."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        for f in sorted(Path(tmp).rglob("*")):
            if f.is_file():
                digest.update(f.relative_to(tmp).as_posix().encode())
                digest.update(f.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Preparing a dataset


@dataclass
class PreparedData:
    """A prepared dataset: its folder, meta, tokenizer and the two memmapped splits."""

    dir: Path
    meta: dict
    tokenizer: object
    train: np.ndarray
    val: np.ndarray


def split_point(n: int) -> int:
    """Index of the first validation token: the first 90% is training, the rest validation (as nanoGPT)."""
    return int(n * (1 - VAL_FRACTION))


def prepare(corpus: Corpus, tokenizer_spec: str = "char", tokenizer=None) -> PreparedData:
    """Tokenize `corpus` into `data/<corpus>_<tokenizer>/`, or reuse it when its meta matches.

    `tokenizer` (a checkpoint's tokenizer, when fine-tuning or resuming) replaces
    the one `tokenizer_spec` would build. A bpe:N tokenizer is trained on the
    first 90% of the characters, so its merges never see the validation text; a
    char tokenizer takes every character of the corpus (as nanoGPT's
    shakespeare_char), so that no validation character is unknown.
    """
    train_chars = corpus.text[: split_point(len(corpus.text))]
    if tokenizer is None:
        parse_tokenizer_spec(tokenizer_spec)  # a bad spec fails before any work
        label = tokenizer_spec.replace(":", "")
        fingerprint = None
        out = data_dir() / f"{corpus.name}_{label}"
    else:
        label = tokenizer_label(tokenizer)
        fingerprint = tokenizer_fingerprint(tokenizer)
        out = _folder_for_tokenizer(corpus, label, fingerprint)

    recover_dir(out)
    _refuse_shard_folder(out)
    meta = _read_meta(out)
    if _reusable(meta, corpus, tokenizer_spec, fingerprint):
        return _open(out, meta, load_tokenizer(out / "tokenizer"))

    print(f"preparing {out} from {corpus.source} ({len(corpus.text):,} characters)")
    if tokenizer is None:
        tokenizer = build_tokenizer(tokenizer_spec, corpus.text, train_chars)
    tokens = np.asarray(tokenizer.encode(corpus.text), dtype=np.int64)
    cut = split_point(tokens.size)
    meta = {
        "version": PREPARE_VERSION,
        "name": out.name,
        "tokenizer": tokenizer_spec if fingerprint is None else f"checkpoint:{label}",
        "tokenizer_kind": type(tokenizer).__name__,
        "tokenizer_sha256": fingerprint or tokenizer_fingerprint(tokenizer),
        "vocab_size": tokenizer.vocab_size,
        "eot_token": tokenizer.eot_token,
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "source": corpus.source,
        "source_sha256": corpus.sha256,
        "characters": len(corpus.text),
        "train_tokens": int(cut),
        "val_tokens": int(tokens.size - cut),
    }
    _write_dataset(out, meta, tokenizer, tokens[:cut], tokens[cut:])
    return _open(out, meta, tokenizer)


def _folder_for_tokenizer(corpus: Corpus, label: str, fingerprint: str) -> Path:
    """Where a given tokenizer's tokens go: the plain `<corpus>_<label>` folder only to reuse it, else its own.

    The plain folder belongs to `--tokenizer <label>`; a resumed run finds its
    own tokenizer there and reuses it. Any other tokenizer (a checkpoint's char
    vocabulary or BPE merges from another text) gets `<corpus>_<label>-<8 hex of
    its fingerprint>`, so the two never rebuild each other's folder in turn.
    """
    plain = data_dir() / f"{corpus.name}_{label}"
    recover_dir(plain)
    if _reusable(_read_meta(plain), corpus, None, fingerprint):
        return plain
    return data_dir() / f"{corpus.name}_{label}-{fingerprint[:8]}"


def _reusable(meta: dict | None, corpus: Corpus, tokenizer_spec: str, fingerprint: str | None) -> bool:
    """Prepared data can be reused when it came from the same text, by the same tokenizer and code."""
    if meta is None or meta.get("version") != PREPARE_VERSION or meta["source_sha256"] != corpus.sha256:
        return False
    if fingerprint is not None:  # a given tokenizer: compare the tokenizers themselves
        return meta.get("tokenizer_sha256") == fingerprint
    return meta.get("tokenizer") == tokenizer_spec  # a spec builds the same tokenizer from the same text


def _refuse_shard_folder(folder: Path) -> None:
    """A folder of shards (scripts/prepare_data.py) is trained on as it is, never rebuilt as train.bin."""
    try:
        shards = "shards" in json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError, TypeError):
        return
    if shards:
        raise MinigptError(f"{folder} holds shards prepared by scripts/prepare_data.py; train on them with "
                           f"--data {folder}, or delete the folder to prepare it as one train.bin again")


META_SCHEMA = schema.Obj({  # the fields of meta.json that reading a data folder relies on
    "version": schema.Int(), "tokenizer": schema.Str(), "tokenizer_sha256": schema.Str(), "source_sha256": schema.Str(),
    "vocab_size": schema.Int(1), "dtype": schema.Str(), "train_tokens": schema.Int(0), "val_tokens": schema.Int(0),
}, required=("version", "tokenizer", "source_sha256", "vocab_size", "dtype", "train_tokens", "val_tokens"))


def _read_meta(folder: Path) -> dict | None:
    """The folder's meta.json, or None when it is missing or unreadable (the folder is then rebuilt)."""
    try:
        return schema.check(json.loads((folder / "meta.json").read_text()), META_SCHEMA, folder / "meta.json")
    except (OSError, ValueError, schema.SchemaError):
        return None


def _write_dataset(out: Path, meta: dict, tokenizer, train, val) -> None:
    """Write the folder next to its final place, then swap it in: nothing is ever half-written."""

    def write(tmp: Path):
        write_tokens(tmp / "train.bin", train, meta["vocab_size"])
        write_tokens(tmp / "val.bin", val, meta["vocab_size"])
        (tmp / "tokenizer").mkdir()
        tokenizer.save(tmp / "tokenizer")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    write_dir(out, write)


def _open(folder: Path, meta: dict, tokenizer) -> PreparedData:
    """The prepared data in `folder`, its token files checked against meta.json (check_token_file)."""
    splits = {}
    for split in ("train", "val"):
        splits[split] = read_tokens(folder / f"{split}.bin")
        check_token_file(splits[split], meta, split, folder / f"{split}.bin")
    return PreparedData(folder, meta, tokenizer, splits["train"], splits["val"])


def rebuild_advice(folder: Path) -> str:
    """What to do about a damaged data folder (prepare reuses a folder whose meta.json matches, so: delete it)."""
    return f"delete {folder} and it is prepared again on the next run (train.py or prepare_data.py)"


TOKEN_CHECK_CHUNK = 1 << 24  # tokens per step of the max: 32 MB of uint16, so no temporary of the whole file


def check_token_file(tokens: np.ndarray, meta: dict, split: str, path: Path) -> None:
    """Refuse a token file that disagrees with meta.json: its count, its dtype, or an id past the vocabulary.

    An id >= vocab_size would reach the embedding as an IndexError mid-run (or,
    on a GPU, wrap round silently); the max over the file, a chunk at a time,
    finds it when the file is opened: 0.035 s per GB of tokens in the page cache (scripts/bench/bench_checks.py).
    """
    expected = meta[f"{split}_tokens"]
    if tokens.size != expected or tokens.dtype.name != meta["dtype"]:
        raise MinigptError(f"{path} holds {tokens.size:,} {tokens.dtype.name} tokens but meta.json says "
                           f"{expected:,} {meta['dtype']}; {rebuild_advice(path.parent)}")
    vocab_size = meta["vocab_size"]
    for start in range(0, tokens.size, TOKEN_CHECK_CHUNK):
        top = int(tokens[start : start + TOKEN_CHECK_CHUNK].max())
        if top >= vocab_size:
            raise MinigptError(f"{path} holds token id {top}, past the vocabulary of {vocab_size} in meta.json "
                               f"(ids 0..{vocab_size - 1}): the file is damaged or from another tokenizer; "
                               f"{rebuild_advice(path.parent)}")


def check_block_size(data: PreparedData, block_size: int) -> None:
    """Both splits must hold at least one window of block_size + 1 tokens."""
    for split, tokens in (("training", data.train), ("validation", data.val)):
        if (tokens.span(block_size) if hasattr(tokens, "span") else tokens.size - block_size) < 1:  # shards: within one
            raise MinigptError(
                f"{data.dir} has {tokens.size} {split} tokens, fewer than block_size + 1 = {block_size + 1}; "
                "use a larger text or a smaller --block_size"
            )


# ---------------------------------------------------------------------------
# Batches


def check_token_ids(x: np.ndarray, y: np.ndarray, vocab_size: int) -> None:
    """Refuse a host batch whose input ids are outside [0, vocab_size), or targets outside it and not -1 (ignored).

    Called on every batch while it is still on the host (a min and a max over
    B x T ints, no device sync): on a GPU an id past the vocabulary would not
    raise, as CuPy's indexing wraps it and the cross-entropy kernel would read
    outside its row (it writes NaN instead, as a last line of defence).
    """
    for what, ids, lowest in (("input", x, 0), ("target", y, -1)):
        if ids.size and (ids.min() < lowest or ids.max() >= vocab_size):
            bad = ids.min() if ids.min() < lowest else ids.max()
            raise MinigptError(f"{what} token id {int(bad)} in a batch is outside the model's vocabulary of "
                               f"{vocab_size} (0..{vocab_size - 1}): the data was tokenized for another "
                               f"vocabulary; prepare it again with this model's tokenizer")


def get_batch(tokens: np.ndarray, batch_size: int, block_size: int, rng: np.random.Generator, rows=None):
    """B random windows of T + 1 tokens -> inputs x (B, T) and targets y = x shifted by one (B, T).

    `rows` (an index array or slice) reads only those rows of the batch: the
    positions of all B are drawn, so the generator advances alike whichever rows
    a caller reads (each rank of a multi-process run reads its own).
    Host-side int64 arrays; the trainer moves them to the model's device.
    `tokens` may also be a split of many shards (minigpt.shards.TokenShards),
    whose windows never cross a shard's end; one array draws as it always has.
    """
    sharded = hasattr(tokens, "gather")
    starts = rng.integers(0, tokens.span(block_size) if sharded else tokens.size - block_size, size=batch_size)
    if rows is not None:
        starts = starts[rows]
    if sharded:
        windows = tokens.gather(starts, block_size)
    else:
        windows = np.asarray(tokens[starts[:, None] + np.arange(block_size + 1)], dtype=np.int64)
    return windows[:, :-1], windows[:, 1:]
