"""GPT-2's byte-level byte-pair encoding (BPE), written out in full.

Encoding a text takes three steps (Radford et al. 2019, section 2.2):

1. Pre-tokenization: GPT-2's regular expression cuts the text into pieces
   (words with their leading space, runs of digits, of punctuation, of
   whitespace) so that no token ever spans two of them.
2. Each piece becomes its UTF-8 bytes; each byte is a token of its own
   (ids 0..255), so any text at all can be encoded and nothing is "unknown".
3. The merge loop: repeatedly find the adjacent pair of tokens whose merge was
   learned earliest (lowest rank) and replace it by the merged token, until no
   adjacent pair has a merge. A per-piece cache means each distinct piece
   (" the", " king") runs this loop once.

The files are OpenAI's `encoder.json` (token string -> id) and `vocab.bpe` (the
merges in rank order, one `left right` per line after a `#version: 0.2`
header); Hugging Face calls the same two files `vocab.json` and `merges.txt`.
Token strings in them are bytes written through `bytes_to_unicode`, so that
every byte is a visible character (a space is `Ġ`, a newline `Ċ`).
"""

import json
import sys
from pathlib import Path

import regex

from minigpt.atomic import write_text
from minigpt.errors import MinigptError
from minigpt.download import download_all
from minigpt.hub import GPT2_NAMES, TOKENIZER_FILES, TOKENIZER_REPO, hub_files
from minigpt.paths import checkpoints_dir
from minigpt.tokenizer.base import Tokenizer, read_json, unknown_ids_error
from minigpt.tokenizer.bpe_train import train_bpe
from minigpt.tokenizer.byte_level import GPT2_SPLIT_PATTERN, bytes_to_unicode, replace_lone_surrogates

ENDOFTEXT = "<|endoftext|>"
# (vocabulary, merges) file names: Hugging Face's first, then OpenAI's.
VOCAB_FILE_NAMES = (TOKENIZER_FILES, ("encoder.json", "vocab.bpe"))
MERGES_HEADER = "#version: 0.2"
# Pieces remembered by the per-piece cache before it is emptied, which bounds
# its memory across many calls; frequent words come straight back.
CACHE_LIMIT = 1 << 17
NO_MERGE = sys.maxsize  # the "rank" of a pair that has no merge


class BPETokenizer(Tokenizer):
    """A byte-level BPE tokenizer: GPT-2's own, or one trained with `train`.

    `vocab` maps token strings (bytes written through `bytes_to_unicode`) to
    ids, `merges` lists the pairs of token strings in the order they were
    learned. Vocabulary entries that are neither a single byte nor made by a
    merge are special tokens such as `<|endoftext|>`: the merge loop never
    produces them, `encode` emits them only when allowed.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        self._vocab = dict(vocab)
        self._merges = list(merges)
        byte_to_char = bytes_to_unicode()
        missing = [char for char in byte_to_char.values() if char not in vocab]
        if missing:
            raise MinigptError(f"the BPE vocabulary lacks {len(missing)} of the 256 byte tokens; "
                               f"it is not a byte-level vocabulary")
        # byte value -> id, and id -> the bytes it stands for
        self._byte_ids = [vocab[byte_to_char[b]] for b in range(256)]
        self._id_to_bytes = {vocab[char]: bytes([b]) for b, char in byte_to_char.items()}
        self._pair_rank, self._merged_id = self._index_merges()
        self._special_tokens = {token: i for token, i in vocab.items() if i not in self._id_to_bytes}
        for token, i in self._special_tokens.items():
            self._id_to_bytes[i] = token.encode("utf-8")
        self._vocab_size = max(vocab.values()) + 1
        self._pattern = regex.compile(GPT2_SPLIT_PATTERN)
        self._cache: dict[str, list[int]] = {}

    def _index_merges(self) -> tuple[dict[tuple[int, int], int], list[int]]:
        """(left id, right id) -> rank, and rank -> id of the merged token.

        Also records the bytes of every merged token in `_id_to_bytes`.
        """
        vocab, pair_rank, merged_ids = self._vocab, {}, []
        for rank, (left, right) in enumerate(self._merges):
            for token in (left, right, left + right):
                if token not in vocab:
                    raise MinigptError(f"merge {rank} ({left} {right}) uses {token!r}, which is "
                                       f"not in the vocabulary; the vocabulary and merges do not match")
            left_id, right_id, merged_id = vocab[left], vocab[right], vocab[left + right]
            if left_id not in self._id_to_bytes or right_id not in self._id_to_bytes:
                raise MinigptError(f"merge {rank} ({left} {right}) uses a token before a merge "
                                   f"makes it; the merges file is out of order or corrupt")
            pair_rank.setdefault((left_id, right_id), rank)
            merged_ids.append(merged_id)
            self._id_to_bytes[merged_id] = self._id_to_bytes[left_id] + self._id_to_bytes[right_id]
        return pair_rank, merged_ids

    # ---- construction from files -------------------------------------------

    @classmethod
    def from_files(cls, encoder_json, vocab_bpe) -> "BPETokenizer":
        """Read OpenAI's `encoder.json` + `vocab.bpe` (or HF's `vocab.json` + `merges.txt`)."""
        vocab = read_json(Path(encoder_json))
        if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
            raise MinigptError(f"{encoder_json} is not a mapping from token strings to integer ids")
        return cls(vocab, read_merges(Path(vocab_bpe)))

    @classmethod
    def load(cls, directory) -> "BPETokenizer":
        """The tokenizer saved in `directory` (vocab.json + merges.txt, or encoder.json + vocab.bpe)."""
        files = find_vocab_files(Path(directory))
        if files is None:
            raise MinigptError(f"{directory} holds no BPE tokenizer: expected vocab.json and "
                               f"merges.txt (or encoder.json and vocab.bpe)")
        return cls.from_files(*files)

    @classmethod
    def from_pretrained(cls, dir_or_name) -> "BPETokenizer":
        """GPT-2's tokenizer from a checkpoint directory, or by name (`gpt2`, `gpt2-xl`, ...).

        All GPT-2 sizes share one tokenizer: a name is looked up in
        checkpoints/<name>/, then checkpoints/gpt2/, and otherwise downloaded
        from the Hugging Face hub into checkpoints/gpt2/.
        """
        path = Path(dir_or_name)
        if path.is_dir():
            return cls.load(path)
        name = str(dir_or_name)
        if name not in GPT2_NAMES:
            raise MinigptError(f"{name!r} is neither a directory nor one of {', '.join(GPT2_NAMES)}; "
                               f"pass a directory holding vocab.json and merges.txt")
        try:
            download_all(gpt2_tokenizer_downloads(name))
        except MinigptError as err:  # offline: either naming of the two files will do
            other = " + ".join(VOCAB_FILE_NAMES[1])
            raise MinigptError(f"{err} (OpenAI's {other}, the same two files under their other names, will do "
                               f"instead: put either pair, vocab.json + merges.txt or {other}, "
                               f"in {gpt2_tokenizer_dir(name)})") from None
        return cls.load(gpt2_tokenizer_dir(name))

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens=(ENDOFTEXT,)) -> "BPETokenizer":
        """Learn a byte-level BPE with `vocab_size` tokens from `text`; see `bpe_train`."""
        vocab, merges = train_bpe(text, vocab_size, special_tokens)
        return cls(vocab, merges)

    def save(self, directory) -> None:
        """Write `vocab.json` and `merges.txt`, the files Hugging Face's GPT2Tokenizer reads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        by_id = dict(sorted(self._vocab.items(), key=lambda item: item[1]))
        write_text(directory / "vocab.json", json.dumps(by_id, ensure_ascii=False))
        lines = [MERGES_HEADER, *(f"{left} {right}" for left, right in self._merges)]
        write_text(directory / "merges.txt", "\n".join(lines) + "\n")

    # ---- the interface -----------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eot_token(self) -> int | None:
        return self._special_tokens.get(ENDOFTEXT)

    @property
    def special_tokens(self) -> dict[str, int]:
        """The special tokens and their ids, e.g. {"<|endoftext|>": 50256} for GPT-2."""
        return dict(self._special_tokens)

    @property
    def merges(self) -> list[tuple[str, str]]:
        """The learned merges as pairs of token strings, in rank order."""
        return list(self._merges)

    def encode(self, text: str, allowed_special="none_raise") -> list[int]:
        """The ids of `text`, with special tokens handled as tiktoken does.

        `allowed_special` is "all", a set of special-token strings, or
        "none_raise". Allowed special tokens found in the text become their own
        id; any other special token in the text is an error (use
        `encode_ordinary` to encode such text as plain characters).
        """
        allowed = self._allowed_specials(allowed_special)
        for token in self._special_tokens:
            if token not in allowed and token in text:
                raise MinigptError(
                    f"the text contains the special token {token!r}; pass "
                    f"allowed_special={{{token!r}}} (or \"all\") to encode it as one token, "
                    f"or use encode_ordinary to encode it as plain text")
        if not allowed:
            return self.encode_ordinary(text)
        # Longest first, so that a special token containing another one wins.
        alternatives = sorted(allowed, key=len, reverse=True)
        special_pattern = regex.compile("|".join(regex.escape(token) for token in alternatives))
        ids = []
        start = 0
        for match in special_pattern.finditer(text):
            ids += self.encode_ordinary(text[start:match.start()])
            ids.append(self._special_tokens[match.group()])
            start = match.end()
        ids += self.encode_ordinary(text[start:])
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """The ids of `text`, reading special-token strings as plain text."""
        try:
            return self._encode_pieces(text)
        except UnicodeEncodeError:
            return self._encode_pieces(replace_lone_surrogates(text))

    def decode(self, ids) -> str:
        """The text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids) -> bytes:
        """The raw bytes of `ids` (a token may hold only part of a character)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        try:
            return b"".join([self._id_to_bytes[i] for i in ids])
        except KeyError:
            raise unknown_ids_error(ids, self._id_to_bytes, self._vocab_size) from None

    # ---- the algorithm -----------------------------------------------------

    def _encode_pieces(self, text: str) -> list[int]:
        """Pre-tokenize, then merge each piece, remembering the ids of pieces seen before."""
        cache = self._cache
        ids = []
        for piece in self._pattern.findall(text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = self._bpe(piece)
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[piece] = piece_ids
            ids += piece_ids
        return ids

    def _bpe(self, piece: str) -> list[int]:
        """The merge loop: apply the lowest-ranked merge, leftmost first, until none applies.

        `ranks[i]` is the rank of merging ids[i] and ids[i+1]; a merge changes
        only its two neighbours' ranks. Taking one occurrence at a time gives
        the same result as merging every occurrence of the pair left to right,
        because a pair involving the new token has a higher rank (a merge is
        listed after the merges that make its tokens).
        """
        ids = [self._byte_ids[b] for b in piece.encode("utf-8")]
        pair_rank = self._pair_rank
        ranks = [pair_rank.get(pair, NO_MERGE) for pair in zip(ids, ids[1:])]
        while ranks:
            best = min(ranks)
            if best == NO_MERGE:
                break
            i = ranks.index(best)
            ids[i:i + 2] = [self._merged_id[best]]
            del ranks[i]
            if i > 0:
                ranks[i - 1] = pair_rank.get((ids[i - 1], ids[i]), NO_MERGE)
            if i < len(ranks):
                ranks[i] = pair_rank.get((ids[i], ids[i + 1]), NO_MERGE)
        return ids

    def _allowed_specials(self, allowed_special) -> set[str]:
        if allowed_special == "all":
            return set(self._special_tokens)
        if allowed_special == "none_raise":
            return set()
        if isinstance(allowed_special, str):
            raise MinigptError(f"allowed_special={allowed_special!r} is not valid; use \"all\", "
                               f"\"none_raise\" or a set of special tokens")
        allowed = set(allowed_special)
        unknown = allowed - set(self._special_tokens)
        if unknown:
            raise MinigptError(f"{sorted(unknown)} are not special tokens of this tokenizer "
                               f"(it has {sorted(self._special_tokens)})")
        return allowed


def gpt2_tokenizer_dir(name: str) -> Path:
    """Where GPT-2 `name`'s tokenizer files are: checkpoints/<name>/ when they are there, else checkpoints/gpt2/."""
    own = checkpoints_dir() / name
    return own if find_vocab_files(own) is not None else checkpoints_dir() / TOKENIZER_REPO


def gpt2_tokenizer_downloads(name: str) -> list[tuple[str, Path]]:
    """The (url, destination) of each GPT-2 tokenizer file still to download for model `name` (often none)."""
    directory = gpt2_tokenizer_dir(name)
    if find_vocab_files(directory) is not None:
        return []
    return hub_files(TOKENIZER_REPO, TOKENIZER_FILES, directory)


def find_vocab_files(directory: Path) -> tuple[Path, Path] | None:
    """The (vocabulary, merges) files in `directory`, or None when it has neither pair."""
    for vocab_name, merges_name in VOCAB_FILE_NAMES:
        if (directory / vocab_name).is_file() and (directory / merges_name).is_file():
            return directory / vocab_name, directory / merges_name
    return None


def read_merges(path: Path) -> list[tuple[str, str]]:
    """Read a merges file: an optional `#version` line, then one `left right` per line."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise MinigptError(f"tokenizer file {path} does not exist") from None
    except OSError as err:  # a permission problem, or a directory in its place: not "does not exist"
        raise MinigptError(f"cannot read tokenizer file {path} ({err.strerror or err}); make it a readable file") from None
    except UnicodeDecodeError:
        raise MinigptError(f"tokenizer file {path} is not UTF-8 text; replace it with an intact copy") from None
    merges = []
    for number, line in enumerate(lines, start=1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise MinigptError(f"line {number} of {path} is not a merge `left right`: {line[:60]!r}")
        merges.append((parts[0], parts[1]))
    return merges
