"""Preparing a corpus of any size: streamed, tokenized in parallel, written as llm.c shards, resumable.

    documents --(reader)--> tasks of ~1 MB of text --(Pool of num_proc)--> token arrays --> shards

Input. A text file, a folder (its files by the rules of `--data`:
minigpt.data.text_files, sorted, hidden and binary files left out, `.gz` files
kept), `.jsonl` files (one document per line, its `text` field), and any of
these gzip-compressed (`.txt.gz`, `.jsonl.gz`). A text file is one document,
read in pieces cut after a newline between two non-space characters: GPT-2's
pre-tokenizer makes that newline a piece of its own, so the cut never changes a token.

Documents are joined as llm.c's fineweb.py does: every document is preceded by
the end-of-text token. A tokenizer without one (char) separates documents by a
blank line ("\\n\\n"), as `--data` does. The token stream is cut into shards
of `shard_tokens` tokens, documents running across shard ends; its first
`val_tokens` tokens are the validation split (llm.c: shard 0 is validation),
in shards of their own: val_000000.bin.., then train_000000.bin..

Memory. Nothing holds the corpus: the reader streams, at most 2 num_proc tasks
are in flight, and the writer holds one shard's buffer (2 bytes a token).

Resume. After each complete shard, `progress.json` records the shards written,
how many tasks they used up and the tokens of the last task that go to the next
shard (`carry_<tasks>.bin`, written before progress.json names it). A killed run skips those tasks (reading, not tokenizing
them) and continues; a finished folder's meta.json carries a fingerprint of the
input (each file's path, size and modification time) and the options, so
running again on the same input does nothing.
"""

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minigpt.atomic import write_text
from minigpt.data import (Corpus, data_dir, is_binary, load_corpus, parse_tokenizer_spec, read_tokens, token_dtype,
                          tokenizer_label)
from minigpt.errors import MinigptError
from minigpt.loading import checkpoint_tokenizer, resolve_checkpoint
from minigpt.shards import META_FILE, PROGRESS_FILE, open_shards, write_shard
from minigpt.tokenizer import BPETokenizer, CharTokenizer, has_tokenizer, load_tokenizer

PREPARATION_VERSION = 1  # bumped whenever the same input and options would give different shards
# text per task: large enough to amortise the pickling, small enough to bound memory (the tests make it small)
TASK_CHARS = int(os.environ.get("MINIGPT_PREPARE_TASK_CHARS", 1 << 20))
BPE_TRAIN_CHARS = 1 << 21  # bpe:N learns its merges from the first 2 MB of text
DEFAULT_VAL_TOKENS = 10_000_000  # and at most a tenth of the corpus (estimated from the first task)
CARRY_FILES = "carry_*.bin"  # carry_<tasks done>.bin: a new name each time, so progress.json never names a newer one
DOC_SEPARATOR = "\n\n"  # between documents, for tokenizers without an end-of-text token


# ---------------------------------------------------------------------------
# Reading documents


def corpus_files(path: Path) -> list[Path]:
    """The files of a corpus: `path` itself, or the text, .jsonl and .gz files under a folder (sorted)."""
    if not path.exists():
        raise MinigptError(f"--data {path} does not exist; give a text or .jsonl file (maybe .gz), or a folder of them")
    if path.is_file():
        return [path]
    files = []
    for p in sorted(path.rglob("*")):
        parts = p.relative_to(path).parts
        if not p.is_file() or any(part.startswith(".") or part == "__pycache__" for part in parts):
            continue
        if p.suffix == ".gz" or not is_binary(p):
            files.append(p)
    if not files:
        raise MinigptError(f"--data {path} is a folder with no text, .jsonl or .gz files in it")
    return files


def open_text(path: Path):
    """(text stream, raw file) of a file, decompressing a .gz; the raw file's position measures progress."""
    raw = open(path, "rb")
    stream = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
    return io.TextIOWrapper(stream, encoding="utf-8", newline=""), raw


def is_jsonl(path: Path) -> bool:
    return path.name.removesuffix(".gz").endswith(".jsonl")


@dataclass
class Task:
    """Some text to tokenize: pieces (text, starts a document), and the input bytes read up to its end."""

    pieces: list
    position: int


def read_pieces(files: list[Path]):
    """(text, starts_document, bytes of input read so far) for every piece of every document, in order."""
    done = 0
    for path in files:
        text, raw = open_text(path)
        try:
            with text:
                if is_jsonl(path):
                    for number, line in enumerate(text, 1):
                        if line.strip():
                            yield _jsonl_text(path, number, line), True, done + raw.tell()
                else:
                    yield from ((piece, first, done + raw.tell()) for piece, first in _file_pieces(text))
        except UnicodeDecodeError as err:
            raise MinigptError(f"{path} is not UTF-8 text ({err.reason}); convert it to UTF-8 first") from None
        except (OSError, EOFError) as err:
            raise MinigptError(f"cannot read {path} ({err}); is it a complete gzip file?") from None
        done += path.stat().st_size


def _jsonl_text(path, number, line) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        raise MinigptError(f"line {number} of {path} is not JSON; a .jsonl corpus has one JSON object per line") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise MinigptError(f"line {number} of {path} has no string `text` field (FineWeb's and OpenWebText's form)")
    return record["text"]


def _file_pieces(text):
    """A text file's pieces of about TASK_CHARS, each cut after a lone newline (`_safe_cut`)."""
    first, pending = True, ""
    while True:
        chunk = text.read(TASK_CHARS)
        pending += chunk
        cut = _safe_cut(pending) if chunk else len(pending)
        if cut:
            yield pending[:cut], first
            first, pending = False, pending[cut:]
        if not chunk:
            return


def _safe_cut(text: str) -> int:
    """The end of the last lone "\\n" (non-space characters on both sides) in `text`, or 0 when there is none.

    GPT-2's pattern makes such a newline a piece of its own, whether the text
    goes on or ends after it; next to other whitespace it would not (`\\s+(?!\\S)`).
    """
    i = len(text) - 1
    while True:
        i = text.rfind("\n", 0, i)
        if i <= 0:
            return 0
        if not text[i + 1].isspace() and not text[i - 1].isspace():
            return i + 1


def read_tasks(files: list[Path]):
    """The pieces grouped into tasks of about TASK_CHARS characters (deterministic: resume skips whole tasks)."""
    pieces, size, position = [], 0, 0
    for piece, starts, position in read_pieces(files):
        pieces.append((piece, starts))
        size += len(piece)
        if size >= TASK_CHARS:
            yield Task(pieces, position)
            pieces, size = [], 0
    if pieces:
        yield Task(pieces, position)


# ---------------------------------------------------------------------------
# Tokenizing (in worker processes)

_WORKER = {}


def init_worker(tokenizer_dir: str) -> None:
    """Each worker loads the tokenizer once from the output folder."""
    tokenizer = load_tokenizer(tokenizer_dir)
    _WORKER["encoder"] = Encoder(tokenizer)


class Encoder:
    """Text pieces -> one token array, documents joined by the end-of-text token (or a blank line)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.eot = tokenizer.eot_token
        if isinstance(tokenizer, CharTokenizer):
            codes = np.array([ord(c) for c in tokenizer.chars], dtype=np.uint32)
            self.order = np.argsort(codes)
            self.sorted_codes = codes[self.order]
        self.separator = None if self.eot is not None else self.encode_text(DOC_SEPARATOR)

    def encode_text(self, text: str) -> np.ndarray:
        if isinstance(self.tokenizer, CharTokenizer):
            return self._encode_chars(text)
        return np.asarray(self.tokenizer.encode_ordinary(text), dtype=self.dtype)

    def _encode_chars(self, text: str) -> np.ndarray:
        """Character ids by binary search over the code points (100x a Python loop over the characters)."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        where = np.minimum(np.searchsorted(self.sorted_codes, codes), len(self.sorted_codes) - 1)
        missing = self.sorted_codes[where] != codes
        if missing.any():
            unknown = "".join(sorted({chr(c) for c in codes[missing][:1000].tolist()}))[:20]
            raise MinigptError(f"the text has characters missing from the tokenizer's vocabulary: {unknown!r}")
        return self.order[where].astype(self.dtype)

    def encode_pieces(self, pieces, first_document: bool) -> np.ndarray:
        parts = []
        for text, starts in pieces:
            if starts and self.eot is not None:
                parts.append(np.array([self.eot], dtype=self.dtype))
            elif starts and not first_document:
                parts.append(self.separator)
            first_document = first_document and not starts
            parts.append(self.encode_text(text))
        return np.concatenate(parts) if parts else np.zeros(0, self.dtype)


def encode_task(pieces, first_document: bool) -> np.ndarray:
    return _WORKER["encoder"].encode_pieces(pieces, first_document)


def task_chars(pieces, first_document: bool) -> set:
    """The characters of a task (the char tokenizer's first pass)."""
    chars = set()
    for text, _ in pieces:
        chars.update(text)
    return chars


def map_tasks(function, tasks, num_proc: int, tokenizer=None, tokenizer_dir=None, start: int = 0):
    """(task, function(task.pieces, is_first_task)) in order, over a Pool of num_proc with 2 num_proc in flight.

    `start` numbers the first of `tasks` (a resumed run's are not the corpus's first).
    The bounded queue is the point: Pool.imap would read the whole input ahead
    of the workers and hold it in memory. Forked workers inherit `tokenizer`
    (loading GPT-2's takes a quarter of a second); spawned ones load it from
    `tokenizer_dir`.
    """
    if tokenizer is not None:
        _WORKER["encoder"] = Encoder(tokenizer)
    if num_proc == 1:
        for i, task in enumerate(tasks, start):
            yield task, function(task.pieces, i == 0)
        return
    fork = "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if fork else "spawn")
    init = (init_worker, (tokenizer_dir,)) if tokenizer_dir is not None and not fork else (None, ())
    with context.Pool(num_proc, *init) as pool:
        pending = deque()
        for i, task in enumerate(tasks, start):
            pending.append((task, pool.apply_async(function, (task.pieces, i == 0))))
            if len(pending) >= 2 * num_proc:
                task, result = pending.popleft()
                yield task, result.get()
        while pending:
            task, result = pending.popleft()
            yield task, result.get()


# ---------------------------------------------------------------------------
# The tokenizer


def build_tokenizer(spec: str, files: list[Path], num_proc: int, progress: bool):
    """The tokenizer `--tokenizer` names: char (a first pass over the corpus), gpt2, bpe:N, or a directory."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if has_tokenizer(path):  # tokenizer files, or a checkpoint with its tokenizer beside the weights
            return load_tokenizer(path)
        directory = resolve_checkpoint(path)  # a training out_dir (its best/ or latest/), a Hugging Face GPT-2 dir
        config = read_json(directory / "config.json") or {}
        return checkpoint_tokenizer(directory, int(config.get("vocab_size", 0)))
    kind, size = parse_tokenizer_spec(spec)
    if kind == "gpt2":
        return BPETokenizer.from_pretrained("gpt2")
    if kind == "bpe":
        text = "".join(_first_chars(files, BPE_TRAIN_CHARS))
        return BPETokenizer.train(text, size)
    total = sum(f.stat().st_size for f in files)
    chars, documents = set(), 0
    with tqdm(total=total, unit="B", unit_scale=True, desc="characters", disable=not progress) as bar:
        for task, found in map_tasks(task_chars, read_tasks(files), num_proc):
            chars |= found
            documents += sum(starts for _, starts in task.pieces)
            bar.update(task.position - bar.n)
    if documents > 1:
        chars |= set(DOC_SEPARATOR)
    if not chars:
        raise MinigptError("the corpus holds no text")
    return CharTokenizer(sorted(chars))


def _first_chars(files, limit):
    for piece, _, _ in read_pieces(files):
        yield piece[:limit]
        limit -= len(piece)
        if limit <= 0:
            return


# ---------------------------------------------------------------------------
# Writing shards


class ShardWriter:
    """The token stream cut into shards: the first val_tokens to val_*.bin, the rest to train_*.bin."""

    def __init__(self, out: Path, vocab_size: int, shard_tokens: int, val_tokens: int | None, shards=None, carry=None):
        self.out, self.vocab_size, self.shard_tokens, self.val_tokens = out, vocab_size, shard_tokens, val_tokens
        self.shards = shards or {"val": [], "train": []}
        self.counts = {split: sum(read_tokens(out / n).size for n in names) for split, names in self.shards.items()}
        self.buffer = np.empty(shard_tokens, dtype=token_dtype(vocab_size))
        self.fill = 0
        if carry is not None:
            self.push(carry)

    @property
    def split(self) -> str:
        return "val" if self.val_tokens is None or self.counts["val"] < self.val_tokens else "train"

    def capacity(self) -> int:
        """Tokens the current shard still takes: shard_tokens, or fewer at the validation split's end."""
        room = self.shard_tokens - self.fill
        if self.split == "val" and self.val_tokens is not None:
            room = min(room, self.val_tokens - self.counts["val"] - self.fill)
        return room

    def push(self, tokens: np.ndarray) -> bool:
        """Append tokens, writing every shard they complete; True when one was written."""
        wrote = False
        while tokens.size:
            take = min(self.capacity(), tokens.size)
            self.buffer[self.fill:self.fill + take] = tokens[:take]
            self.fill += take
            tokens = tokens[take:]
            if self.capacity() == 0:
                self.flush()
                wrote = True
        return wrote

    def flush(self) -> None:
        if not self.fill:
            return
        split = self.split
        name = f"{split}_{len(self.shards[split]):06d}.bin"
        write_shard(self.out / name, self.buffer[:self.fill], self.vocab_size)
        self.shards[split].append(name)
        self.counts[split] += self.fill
        self.fill = 0

    def pending(self) -> np.ndarray:
        return self.buffer[:self.fill]


# ---------------------------------------------------------------------------
# The whole preparation


def corpus_path(corpus: Corpus) -> Path:
    """Where a built-in corpus's text is written for preparation: data/corpora/<name>.txt."""
    return data_dir() / "corpora" / f"{corpus.name}.txt"


def prepared_shards(dataset: str, data, tokenizer_spec: str):
    """The shards prepare_data.py made ahead of time from this corpus with this tokenizer, or None.

    train.py --dataset/--data then trains on them instead of preparing the text
    again: the default folder must hold a complete preparation whose
    fingerprint matches the input as it is now.
    """
    if data is not None:
        path = Path(data).expanduser()
    else:
        corpus = load_corpus(dataset)
        path = corpus_path(corpus)
        try:
            if path.read_text(encoding="utf-8") != corpus.text:
                return None
        except OSError:
            return None
    if not path.exists():
        return None
    folder = default_out(path, tokenizer_spec)
    meta = read_json(folder / META_FILE)
    if not (meta and meta.get("complete") and isinstance(meta.get("options"), dict)):
        return None
    if meta["fingerprint"] != fingerprint(corpus_files(path), meta["options"]) or meta["options"]["tokenizer"] != tokenizer_spec:
        return None
    print(f"training on the shards in {folder} (prepared by scripts/prepare_data.py)")
    return open_shards(folder)


def default_out(path: Path, spec: str) -> Path:
    """data/<name>_<tokenizer>/ as `--data` names its folders (a directory tokenizer: its label)."""
    stem = path.resolve().name if path.is_dir() else path.name.removesuffix(".gz").rsplit(".", 1)[0]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "data"
    label = spec.replace(":", "") if not Path(spec).expanduser().is_dir() else Path(spec).resolve().name
    return data_dir() / f"{name}_{label}"


def fingerprint(files: list[Path], options: dict) -> str:
    """sha256 over each input file's path, size and modification time, and the options that shape the shards."""
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    payload = json.dumps({"files": stats, "options": options, "version": PREPARATION_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def prepare_shards(data, tokenizer_spec: str = "char", out=None, num_proc: int | None = None,
                   shard_tokens: int = 100_000_000, val_tokens: int | None = None, progress: bool = True,
                   corpus: Corpus | None = None) -> tuple[Path, dict]:
    """Tokenize `data` (a path; or a built-in `corpus`) into shards in `out`; returns (out, its meta).

    Resumes a killed preparation of the same input and options; returns at once,
    saying so, when `out` already holds it.
    """
    if not 1 <= shard_tokens <= 2**31 - 1:
        raise MinigptError(f"--shard_tokens must be between 1 and 2^31 - 1 (llm.c's int32 count), got {shard_tokens}")
    if val_tokens is not None and val_tokens < 1:
        raise MinigptError(f"--val_tokens must be at least 1, got {val_tokens}")
    num_proc = num_proc or os.cpu_count() or 1
    if num_proc < 1:
        raise MinigptError(f"--num_proc must be at least 1, got {num_proc}")
    if not Path(tokenizer_spec).expanduser().is_dir():
        parse_tokenizer_spec(tokenizer_spec)  # a bad spec fails before any reading
    if corpus is not None:  # a built-in corpus (pydoc, shakespeare): its text, written once beside the shards
        path = corpus_path(corpus)
        if not path.is_file() or path.read_text(encoding="utf-8") != corpus.text:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, corpus.text)
    else:
        path = Path(data).expanduser()
    files = corpus_files(path)
    out = Path(out).expanduser() if out is not None else default_out(path, tokenizer_spec)
    options = {"tokenizer": tokenizer_spec, "shard_tokens": shard_tokens, "val_tokens": val_tokens}
    key = fingerprint(files, options)

    meta = read_json(out / META_FILE)
    if meta is not None and meta.get("complete") and meta.get("fingerprint") == key:
        print(f"{out} already holds {path} prepared with these options "
              f"({meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens): nothing to do")
        return out, meta
    if meta is not None and meta.get("complete"):
        raise MinigptError(f"--out {out} already holds shards of another input or other options; "
                           "delete it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # half-written files of a killed run
        stale.unlink()

    state, tokenizer = _resume_or_start(out, key, tokenizer_spec, files, num_proc, val_tokens, progress)
    carry = read_tokens(out / state["carry"]) if state.get("carry") else None
    writer = ShardWriter(out, tokenizer.vocab_size, shard_tokens, state["val_tokens"], state["shards"],
                         None if carry is None else np.array(carry))
    total = sum(f.stat().st_size for f in files)
    tokens, started = sum(writer.counts.values()) + writer.fill, time.perf_counter()
    tokens_at_start = tokens
    print(f"preparing {out} from {path} ({total / 1e6:,.1f} MB in {len(files)} file(s)) with {num_proc} process(es)")
    tasks = read_tasks(files)
    skipped = sum(1 for _ in zip(range(state["tasks_done"]), tasks))  # resume: read past the done tasks
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not progress) as bar:
        encoded = map_tasks(encode_task, tasks, num_proc, tokenizer, str(out / "tokenizer"), start=skipped)
        for i, (task, ids) in enumerate(encoded, start=skipped):
            if writer.val_tokens is None:  # default split: a tenth of the estimated total, at most 10M tokens
                estimate = ids.size * total / max(task.position, 1)
                writer.val_tokens = state["val_tokens"] = max(1, min(DEFAULT_VAL_TOKENS, int(0.1 * estimate)))
            tokens += ids.size
            if writer.push(ids):  # a shard is complete: remember how far the input is done
                state.update(tasks_done=i + 1, shards=writer.shards, carry=f"carry_{i + 1:09d}.bin")
                write_shard(out / state["carry"], writer.pending(), tokenizer.vocab_size)
                write_text(out / PROGRESS_FILE, json.dumps(state))  # the moment the new state counts
                for old in out.glob(CARRY_FILES):
                    if old.name != state["carry"]:
                        old.unlink()
            rate = (tokens - tokens_at_start) / max(time.perf_counter() - started, 1e-9)
            bar.update(task.position - bar.n)
            bar.set_postfix_str(f"{tokens:,} tokens, {rate:,.0f} tok/s", refresh=False)
    writer.flush()
    meta = _finish(out, path, key, options, tokenizer, writer)
    elapsed = time.perf_counter() - started
    print(f"{out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens in "
          f"{len(writer.shards['train']) + len(writer.shards['val'])} shard(s), "
          f"{(tokens - tokens_at_start) / max(elapsed, 1e-9):,.0f} tokens/s")
    return out, meta


def _resume_or_start(out: Path, key: str, tokenizer_spec, files, num_proc, val_tokens, progress):
    """(progress state, tokenizer): a killed run's, when progress.json has this fingerprint, else a fresh start."""
    state = read_json(out / PROGRESS_FILE)
    if state is not None and state.get("fingerprint") == key and (out / "tokenizer").is_dir():
        print(f"resuming {out}: {sum(len(v) for v in state['shards'].values())} complete shard(s), "
              f"{state['tasks_done']:,} task(s) of input done")
        return state, load_tokenizer(out / "tokenizer")
    for old in [*out.glob("val_*.bin"), *out.glob("train_*.bin"), *out.glob(CARRY_FILES), out / PROGRESS_FILE]:
        old.unlink(missing_ok=True)
    tokenizer = build_tokenizer(tokenizer_spec, files, num_proc, progress)
    (out / "tokenizer").mkdir(exist_ok=True)
    tokenizer.save(out / "tokenizer")
    return {"fingerprint": key, "tasks_done": 0, "shards": {"val": [], "train": []}, "val_tokens": val_tokens}, tokenizer


def _finish(out: Path, path: Path, key: str, options: dict, tokenizer, writer: ShardWriter) -> dict:
    """Write meta.json (the folder is then complete) and remove the resume files; returns the meta."""
    if not writer.shards["train"]:
        raise MinigptError(f"{path} gives only {writer.counts['val']:,} tokens, all of them validation "
                           f"(--val_tokens {writer.val_tokens:,}); give more text or a smaller --val_tokens")
    meta = {
        "version": PREPARATION_VERSION, "complete": True, "format": "llm.c", "name": out.name,
        "source": str(path.resolve()), "fingerprint": key, "options": options, **options,
        "tokenizer_kind": type(tokenizer).__name__, "tokenizer_label": tokenizer_label(tokenizer),
        "vocab_size": tokenizer.vocab_size, "eot_token": tokenizer.eot_token,
        "dtype": token_dtype(tokenizer.vocab_size).name, "val_tokens": writer.counts["val"],
        "train_tokens": writer.counts["train"], "shards": writer.shards,
    }
    write_text(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    for done in (out / PROGRESS_FILE, *out.glob(CARRY_FILES)):
        done.unlink(missing_ok=True)
    return meta

