"""Tokenizers: GPT-2's BPE against tiktoken, BPE training, the character tokenizer, files.

The GPT-2 comparisons need OpenAI's files from the directory named by
MINIGPT_GPT2_TOKENIZER_DIR (GPT2_FILES: encoder.json, vocab.bpe, gpt2.tiktoken,
tinyshakespeare.txt), absolute or relative to where pytest runs; without it
they are skipped, and the short summary (-rs) says why.
"""

import functools
import http.server
import json
import os
import random
import socket
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.errors import MinigptError
from minigpt.tokenizer import (GPT2_SPLIT_PATTERN, BPETokenizer, CharTokenizer, Tokenizer,
                               bytes_to_unicode, load_tokenizer)

ENV_VAR = "MINIGPT_GPT2_TOKENIZER_DIR"
EOT = "<|endoftext|>"


# ---- GPT-2's files, tiktoken, and the texts to compare on ------------------

GPT2_FILES = ("encoder.json", "vocab.bpe", "gpt2.tiktoken", "tinyshakespeare.txt")  # the README lists the same


def find_gpt2_dir() -> tuple[Path | None, str]:
    """(the absolute directory named by MINIGPT_GPT2_TOKENIZER_DIR, "") or (None, why the tests skip).

    The path is resolved here, where it is read: a relative value (the README's
    ../shared/data) would otherwise point nowhere once a test symlinks to it or
    changes directory.
    """
    directory = os.environ.get(ENV_VAR)
    if not directory:
        return None, (f"set {ENV_VAR} to a directory holding GPT-2's {', '.join(GPT2_FILES)} "
                      f"(e.g. ../shared/data) to run this test")
    directory = Path(directory).expanduser().resolve()
    missing = [name for name in GPT2_FILES if not (directory / name).is_file()]
    if missing:
        return None, f"{ENV_VAR}={directory} lacks {', '.join(missing)}"
    return directory, ""


@pytest.fixture(scope="module")
def gpt2_dir() -> Path:
    directory, reason = find_gpt2_dir()
    if directory is None:
        pytest.skip(reason)
    return directory


@pytest.fixture(scope="module")
def gpt2(gpt2_dir) -> BPETokenizer:
    return BPETokenizer.from_files(gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe")


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_dir):
    """tiktoken's GPT-2 encoding, built offline from the same ranks."""
    tiktoken = pytest.importorskip("tiktoken")
    import tiktoken.load  # noqa: F811  (the submodule is not imported by the package itself)
    ranks = tiktoken.load.load_tiktoken_bpe(str(gpt2_dir / "gpt2.tiktoken"))
    return tiktoken.Encoding("gpt2-offline", pat_str=GPT2_SPLIT_PATTERN,
                             mergeable_ranks=ranks, special_tokens={EOT: 50256})


@pytest.fixture(scope="module")
def shakespeare(gpt2_dir) -> str:
    return (gpt2_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")


def python_source(n_chars: int = 300_000) -> str:
    """The first `n_chars` characters of the standard library's own modules, in name order."""
    parts, total = [], 0
    for path in sorted(Path(os.__file__).parent.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        parts.append(source)
        total += len(source)
        if total >= n_chars:
            break
    return "".join(parts)[:n_chars]


TORTURE_FRAGMENTS = [
    # contractions, in both cases and in odd places
    "don't DON'T Don't I'm I'M we've WE'VE you'll YOU'LL he'd HE'D it's IT'S they're THEY'RE",
    "'tis o'clock rock'n'roll '' 's 't ''s 'S 'LL ' re",
    # whitespace runs: spaces, tabs, newlines, carriage returns, trailing and leading
    "a  b   c    d", "   leading", "trailing   ", "\n\n\n", "\t\t\tx", "x\r\ny\r\n\r\n",
    " \t \n \u00a0 ", "end with newline and spaces  \n  ", "     \n", "\u3000full width space\u3000",
    # digits and numbers
    "0 12 345 6789 3.14159 1,000,000 007 2026-11-25 0x1F 1e-5 -42",
    "\u0661\u0662\u0663 \u00bd \u00b2 \u2167 \uff11\uff12",
    # punctuation runs
    "!!!??? ... --- ;;; ()[]{} <<>> @#$%^&*_+= ~`|\\ ''' \"\"\" ?!.,:; -- <|endoftext| |>",
    # accents, precomposed and combining
    "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m r\u00e9sum\u00e9 Zo\u00eb fa\u00e7ade cafe\u0301 n\u0303",
    # other scripts
    "\u0391\u03b8\u03ae\u03bd\u03b1 \u041c\u043e\u0441\u043a\u0432\u0430 \u05e9\u05dc\u05d5\u05dd "
    "\u0645\u0631\u062d\u0628\u0627 \u0928\u092e\u0938\u094d\u0924\u0947 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    # CJK
    "\u4e2d\u6587\u5b57\u7b26\u6d4b\u8bd5 \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 "
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    # emoji: plain, skin tone, ZWJ family, flag, variation selector
    "\U0001f600 \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 "
    "\U0001f1eb\U0001f1f7 \u2764\ufe0f",
    # zero-width and control characters
    "zero\u200bwidth\u200c\u200djoiner\ufeffbom",
    "\x00\x01\x07\x1b[31mred\x1b[0m \x7f \x85 \u2028 \u2029 \x0b\x0c",
    # unpaired surrogates (not valid UTF-8), and a pair written as two code points
    "lone \ud800 high and \udfff low, a pair \ud83d\ude00 here",
]


def torture_text(n_chars: int = 100_000, seed: int = 0) -> str:
    """The fragments above, then random mixtures of them with random whitespace between."""
    rng = random.Random(seed)
    separators = ["", " ", "  ", "\n", "\t", " \n", "\n\n ", "   \t"]
    parts = list(TORTURE_FRAGMENTS)
    total = sum(map(len, parts))
    while total < n_chars:
        fragment = rng.choice(TORTURE_FRAGMENTS)
        start = rng.randrange(len(fragment))
        piece = fragment[start:start + rng.randrange(1, 40)] + rng.choice(separators)
        parts.append(piece)
        total += len(piece)
    return "".join(parts)


def assert_same_ids(ours: list[int], expected: list[int], text: str, tokenizer) -> None:
    """Compare id lists, showing where and on which text they first differ."""
    if ours == expected:
        return
    first = next((i for i, (a, b) in enumerate(zip(ours, expected)) if a != b),
                 min(len(ours), len(expected)))
    context = tokenizer.decode(expected[max(0, first - 5):first + 5])
    pytest.fail(f"ids differ at position {first} of {len(expected)} (around {context!r}): "
                f"ours {ours[first:first + 5]}, tiktoken {expected[first:first + 5]}")


# ---- GPT-2: exact equality with tiktoken ------------------------------------

def test_known_ids_and_sizes(gpt2):
    assert gpt2.encode("Hello world, this is GPT-2.") == [15496, 995, 11, 428, 318, 402, 11571, 12, 17, 13]
    assert gpt2.vocab_size == 50257
    assert gpt2.eot_token == 50256
    assert gpt2.special_tokens == {EOT: 50256}
    assert isinstance(gpt2, Tokenizer)


def test_shakespeare_matches_tiktoken(gpt2, tiktoken_gpt2, shakespeare):
    ids = gpt2.encode(shakespeare)
    assert_same_ids(ids, tiktoken_gpt2.encode_ordinary(shakespeare), shakespeare, gpt2)
    assert gpt2.decode(ids) == shakespeare


def test_python_source_matches_tiktoken(gpt2, tiktoken_gpt2):
    source = python_source()
    assert len(source) >= 200_000
    ids = gpt2.encode(source)
    assert_same_ids(ids, tiktoken_gpt2.encode_ordinary(source), source, gpt2)
    assert gpt2.decode(ids) == source


def test_torture_text_matches_tiktoken(gpt2, tiktoken_gpt2):
    text = torture_text()
    ids = gpt2.encode(text)
    assert_same_ids(ids, tiktoken_gpt2.encode_ordinary(text), text, gpt2)
    # Lone surrogates cannot round-trip (they are not UTF-8); tiktoken turns them into U+FFFD too.
    assert gpt2.decode(ids) == tiktoken_gpt2.decode(ids)


@pytest.mark.parametrize("fragment", TORTURE_FRAGMENTS)
def test_each_torture_fragment_matches_tiktoken(gpt2, tiktoken_gpt2, fragment):
    assert gpt2.encode(fragment) == tiktoken_gpt2.encode_ordinary(fragment)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=()), max_size=60))
def test_any_text_matches_tiktoken(gpt2, tiktoken_gpt2, text):
    """Any code points at all, surrogates included."""
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_gpt2_round_trip(gpt2, text):
    assert gpt2.decode(gpt2.encode_ordinary(text)) == text


# ---- special tokens ----------------------------------------------------------

def test_special_token_raises_by_default(gpt2):
    with pytest.raises(MinigptError, match="endoftext.*allowed_special"):
        gpt2.encode(f"one{EOT}two")


@pytest.mark.parametrize("allowed", ["all", {EOT}, [EOT]])
def test_allowed_special_token_becomes_one_id(gpt2, tiktoken_gpt2, allowed):
    text = f"one{EOT}two {EOT}{EOT}\nthree{EOT}"
    ids = gpt2.encode(text, allowed_special=allowed)
    assert ids.count(50256) == 4
    assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text


def test_encode_ordinary_reads_special_tokens_as_text(gpt2, tiktoken_gpt2):
    text = f"one{EOT}two"
    ids = gpt2.encode_ordinary(text)
    assert 50256 not in ids
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(ids) == text


def test_only_the_allowed_special_tokens_are_accepted():
    tokenizer = BPETokenizer.train("some text to train on " * 20, 300, special_tokens=(EOT, "<|pad|>"))
    pad, eot = tokenizer.special_tokens["<|pad|>"], tokenizer.eot_token
    text = f"a<|pad|>b{EOT}"
    with pytest.raises(MinigptError, match="endoftext"):
        tokenizer.encode(text, allowed_special={"<|pad|>"})
    assert tokenizer.encode("a<|pad|>b", allowed_special={"<|pad|>"}).count(pad) == 1
    ids = tokenizer.encode(text, allowed_special="all")
    assert (ids.count(pad), ids.count(eot)) == (1, 1)
    with pytest.raises(MinigptError, match="not special tokens"):
        tokenizer.encode(text, allowed_special={"<|mask|>"})
    with pytest.raises(MinigptError, match="not valid"):
        tokenizer.encode(text, allowed_special="none")


# ---- decoding ----------------------------------------------------------------

def test_decode_replaces_invalid_utf8(gpt2):
    byte_id = {b: i for i, b in enumerate(bytes_to_unicode())}
    half_euro = [byte_id[0xE2], byte_id[0x82]]  # the first two of the three bytes of "€"
    assert gpt2.decode_bytes(half_euro) == b"\xe2\x82"
    assert gpt2.decode(half_euro) == "\ufffd"
    assert gpt2.decode([byte_id[0xFF], *gpt2.encode("ok")]) == "\ufffdok"


def test_decode_rejects_unknown_ids(gpt2):
    with pytest.raises(MinigptError, match="50257"):
        gpt2.decode([15496, 50257])
    with pytest.raises(MinigptError, match="-1"):
        gpt2.decode([-1])


def test_decode_accepts_arrays(gpt2):
    ids = gpt2.encode("arrays of ids")
    assert gpt2.decode(np.array(ids, dtype=np.int64)) == "arrays of ids"
    assert gpt2.decode(np.array(ids, dtype=np.uint16)) == "arrays of ids"


# ---- GPT-2's files -----------------------------------------------------------

def test_save_writes_hugging_face_files(gpt2, gpt2_dir, tmp_path, shakespeare):
    gpt2.save(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == json.loads((gpt2_dir / "encoder.json").read_text(encoding="utf-8"))
    merges_text = (tmp_path / "merges.txt").read_text(encoding="utf-8")
    lines = merges_text.split("\n")
    assert lines[0] == "#version: 0.2" and lines[-1] == ""  # GPT2Tokenizer drops first and last
    original = (gpt2_dir / "vocab.bpe").read_text(encoding="utf-8").strip().split("\n")[1:]
    assert lines[1:-1] == original
    reloaded = load_tokenizer(tmp_path)
    assert isinstance(reloaded, BPETokenizer)
    sample = shakespeare[:20_000]
    assert reloaded.encode(sample) == gpt2.encode(sample)


def test_from_pretrained_directory(gpt2, gpt2_dir):
    tokenizer = BPETokenizer.from_pretrained(gpt2_dir)
    assert tokenizer.encode(" Shakespeare's") == gpt2.encode(" Shakespeare's")


@pytest.fixture
def local_hub(gpt2_dir, tmp_path):
    """An HTTP server that serves GPT-2's vocab.json and merges.txt like the Hugging Face hub."""
    files = tmp_path / "hub" / "gpt2" / "resolve" / "main"
    files.mkdir(parents=True)
    (files / "vocab.json").symlink_to(gpt2_dir / "encoder.json")
    (files / "merges.txt").symlink_to(gpt2_dir / "vocab.bpe")
    handler = functools.partial(QuietHandler, directory=str(tmp_path / "hub"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_from_pretrained_name_downloads_once(local_hub, tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("MINIGPT_CHECKPOINTS_DIR", str(checkpoints))
    monkeypatch.setenv("HF_ENDPOINT", local_hub)
    tokenizer = BPETokenizer.from_pretrained("gpt2-xl")  # every size shares gpt2's files
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert sorted(p.name for p in (checkpoints / "gpt2").iterdir()) == ["merges.txt", "vocab.json"]
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())  # now offline: the files are on disk
    assert BPETokenizer.from_pretrained("gpt2").encode("Hello world") == [15496, 995]


def test_from_pretrained_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGPT_CHECKPOINTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    with pytest.raises(MinigptError, match="could not download"):
        BPETokenizer.from_pretrained("gpt2")


def test_from_pretrained_unknown_name():
    with pytest.raises(MinigptError, match="neither a directory nor"):
        BPETokenizer.from_pretrained("gpt3")


# ---- training ----------------------------------------------------------------

def token_strings(tokenizer, ids):
    return [tokenizer.decode([i]) for i in ids]


def test_training_textbook_example():
    """Wikipedia's example: aa -> Z, then ab -> Y (tied with Za, ab's bytes sort first), then ZY."""
    tokenizer = BPETokenizer.train("aaabdaaabac", 256 + 3, special_tokens=())
    assert tokenizer.merges == [("a", "a"), ("a", "b"), ("aa", "ab")]
    assert token_strings(tokenizer, tokenizer.encode("aaabdaaabac")) == ["aaab", "d", "aaab", "a", "c"]
    assert tokenizer.vocab_size == 259
    assert tokenizer.eot_token is None


def reference_merges(text: str, n_merges: int) -> list[tuple[bytes, bytes]]:
    """The slow, obvious trainer: recount every pair of every word before each merge."""
    words = Counter(tuple(bytes([b]) for b in word.encode("utf-8"))
                    for word in regex.findall(GPT2_SPLIT_PATTERN, text))
    merges = []
    for _ in range(n_merges):
        pair_counts = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merges.append(best)
        merged_words = Counter()
        for word, count in words.items():
            merged, i = [], 0
            while i < len(word):
                if word[i:i + 2] == best:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            merged_words[tuple(merged)] += count
        words = merged_words
    return merges


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_matches_recounting_from_scratch(seed):
    rng = random.Random(seed)
    syllables = ["ab", "ba", "aab", "the", " the", "re", "er", "a", "  ", "\n", "1", "22", "é", "!"]
    text = "".join(rng.choice(syllables) + rng.choice(["", "", " "]) for _ in range(3000))
    tokenizer = BPETokenizer.train(text, 256 + 150, special_tokens=())
    char_to_byte = {char: b for b, char in bytes_to_unicode().items()}
    as_bytes = [tuple(bytes(char_to_byte[c] for c in part) for part in merge)
                for merge in tokenizer.merges]
    assert as_bytes == reference_merges(text, 150)


def test_no_merge_crosses_a_word_boundary():
    text = "hello world, hello there.\nhello  world 42 times\n" * 40
    tokenizer = BPETokenizer.train(text, 1000, special_tokens=())
    assert tokenizer.vocab_size < 1000  # it ran out of pairs: every word became one token
    words = set(regex.findall(GPT2_SPLIT_PATTERN, text))
    assert all(len(tokenizer.encode(word)) == 1 for word in words)
    learned = token_strings(tokenizer, range(256, tokenizer.vocab_size))
    for token in learned:
        assert regex.findall(GPT2_SPLIT_PATTERN, token) == [token], token


def test_special_tokens_are_cut_out_of_training():
    tokenizer = BPETokenizer.train(f"tea{EOT}" * 100, 400)
    learned = token_strings(tokenizer, range(256, tokenizer.eot_token))
    assert all("|" not in token and "<" not in token for token in learned)
    assert tokenizer.eot_token == tokenizer.vocab_size - 1
    assert tokenizer.encode(f"tea{EOT}" * 3, allowed_special="all").count(tokenizer.eot_token) == 3


def test_training_stops_when_nothing_is_left_to_merge():
    tokenizer = BPETokenizer.train("ab ab", 1000)  # words "ab" and " ab"
    assert tokenizer.merges == [("a", "b"), ("\u0120", "ab")]  # \u0120 is the space, "Ġ"
    assert tokenizer.vocab_size == 256 + 2 + 1


def test_training_rejects_a_too_small_vocabulary():
    with pytest.raises(MinigptError, match="too small"):
        BPETokenizer.train("text", 256)


def test_train_save_load_gives_the_same_ids(tmp_path):
    source = python_source(260_000)
    corpus, held_out = source[:200_000], source[200_000:]
    tokenizer = BPETokenizer.train(corpus, 1024)
    assert tokenizer.vocab_size == 1024
    tokenizer.save(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert isinstance(reloaded, BPETokenizer)
    assert reloaded.eot_token == tokenizer.eot_token == 1023
    ids = tokenizer.encode(held_out)
    assert reloaded.encode(held_out) == ids
    assert reloaded.decode(ids) == held_out
    assert len(ids) < len(held_out.encode("utf-8")) / 2  # it does compress


@pytest.fixture(scope="module")
def small_bpe() -> BPETokenizer:
    return BPETokenizer.train(" ".join(TORTURE_FRAGMENTS) * 3, 256 + 200)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_trained_round_trip(small_bpe, text):
    assert small_bpe.decode(small_bpe.encode_ordinary(text)) == text


# ---- the character tokenizer -------------------------------------------------

def test_char_tokenizer_vocabulary_is_sorted_characters():
    tokenizer = CharTokenizer.train("hello world")
    assert tokenizer.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tokenizer.encode("hello") == [3, 2, 4, 4, 5]
    assert tokenizer.decode([7, 5, 6, 4, 1]) == "world"
    assert (tokenizer.vocab_size, tokenizer.eot_token) == (8, None)


def test_char_tokenizer_names_unknown_characters():
    tokenizer = CharTokenizer.train("abc")
    with pytest.raises(MinigptError, match="2 character.*'XZ'"):
        tokenizer.encode("aXbZX")


def test_char_tokenizer_rejects_unknown_ids():
    with pytest.raises(MinigptError, match="3"):
        CharTokenizer.train("abc").decode([0, 3])


def test_char_tokenizer_save_load(tmp_path):
    text = "To be, or not to be: that is the question.\n\u00e9\u4e2d\U0001f600"
    tokenizer = CharTokenizer.train(text)
    tokenizer.save(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert isinstance(reloaded, CharTokenizer)
    assert reloaded.chars == tokenizer.chars
    assert reloaded.encode(text) == tokenizer.encode(text)
    assert reloaded.decode(np.array(tokenizer.encode(text))) == text


@settings(max_examples=100, deadline=None)
@given(text=st.text(min_size=1, max_size=100))
def test_char_round_trip(text):
    tokenizer = CharTokenizer.train(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text


# ---- loading whatever a directory holds, and broken files ------------------------

def test_load_tokenizer_empty_or_missing_directory(tmp_path):
    with pytest.raises(MinigptError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(MinigptError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")


def test_corrupt_files_are_clear_errors(small_bpe, tmp_path):
    small_bpe.save(tmp_path)
    merges = tmp_path / "merges.txt"
    merges.write_text("#version: 0.2\nĠ t h\n", encoding="utf-8")
    with pytest.raises(MinigptError, match="line 2"):
        load_tokenizer(tmp_path)
    merges.write_text("#version: 0.2\nzz qq\n", encoding="utf-8")
    with pytest.raises(MinigptError, match="not in the vocabulary"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0,', encoding="utf-8")
    with pytest.raises(MinigptError, match="not valid JSON"):
        load_tokenizer(tmp_path)
    char_dir = tmp_path / "char"
    char_dir.mkdir()
    (char_dir / "char_tokenizer.json").write_text('{"type": "word"}', encoding="utf-8")
    with pytest.raises(MinigptError, match="not a character tokenizer"):
        load_tokenizer(char_dir)
