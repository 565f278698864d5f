"""The data pipeline: token files, corpora, preparing and reusing datasets, batches, the Shakespeare download."""

import functools
import hashlib
import http.server
import json
import re
import threading

import numpy as np
import pytest

from minigpt.data import (
    HEADER_BYTES,
    MAGIC,
    check_block_size,
    get_batch,
    load_corpus,
    path_corpus,
    prepare,
    read_tokens,
    write_tokens,
)
from minigpt.errors import MinigptError

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40



@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


# -- token files -------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size, dtype", [(50257, np.uint16), (100_000, np.uint32)])
def test_token_file_round_trip(tmp_path, vocab_size, dtype):
    tokens = np.random.default_rng(0).integers(0, vocab_size, size=1000)
    path = tmp_path / "t.bin"
    write_tokens(path, tokens, vocab_size)
    header = np.fromfile(path, dtype="<i4", count=4)
    assert list(header) == [MAGIC, 1, 1000, np.dtype(dtype).itemsize]
    back = read_tokens(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, tokens)


def test_truncated_token_file_is_an_error(tmp_path):
    path = tmp_path / "t.bin"
    write_tokens(path, np.arange(100), 256)
    path.write_bytes(path.read_bytes()[: HEADER_BYTES + 50])
    with pytest.raises(MinigptError, match="truncated"):
        read_tokens(path)


def test_foreign_file_is_an_error(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(b"\0" * 2000)
    with pytest.raises(MinigptError, match="not a minigpt token file"):
        read_tokens(path)


# -- preparing ----------------------------------------------------------------------


def test_prepare_char_splits_last_tenth_for_validation(text_file, data_dir):
    data = prepare(load_corpus(data=str(text_file)), "char")
    assert data.dir == data_dir / "corpus_char"
    meta = json.loads((data.dir / "meta.json").read_text())
    assert meta["tokenizer"] == "char" and meta["vocab_size"] == len(set(TEXT))
    assert meta["source_sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    n = data.train.size + data.val.size
    assert n == len(TEXT)  # one token per character
    assert data.train.size == int(0.9 * n)
    tok = data.tokenizer
    assert tok.decode(data.train.tolist()) + tok.decode(data.val.tolist()) == TEXT  # the split is the tail


def test_prepared_data_is_reused_and_rebuilt_when_the_text_changes(text_file, capsys):
    first = prepare(load_corpus(data=str(text_file)), "char")
    stamp = (first.dir / "train.bin").stat().st_mtime_ns
    capsys.readouterr()
    again = prepare(load_corpus(data=str(text_file)), "char")
    assert "preparing" not in capsys.readouterr().out
    assert (again.dir / "train.bin").stat().st_mtime_ns == stamp

    text_file.write_text(TEXT + "Zounds!\n", encoding="utf-8")
    rebuilt = prepare(load_corpus(data=str(text_file)), "char")
    assert "preparing" in capsys.readouterr().out
    assert rebuilt.dir == first.dir
    assert rebuilt.train.size + rebuilt.val.size == len(TEXT) + 8


def test_prepare_with_a_given_tokenizer_reuses_matching_data(text_file, capsys):
    first = prepare(load_corpus(data=str(text_file)), "char")
    capsys.readouterr()
    again = prepare(load_corpus(data=str(text_file)), tokenizer=first.tokenizer)  # as a resumed run does
    assert again.dir == first.dir
    assert "preparing" not in capsys.readouterr().out


def test_bpe_tokenizer_is_trained_on_the_training_text(text_file):
    data = prepare(load_corpus(data=str(text_file)), "bpe:300")
    assert data.meta["vocab_size"] == 300
    assert data.tokenizer.decode(data.train.tolist() + data.val.tolist()) == TEXT
    assert data.train.size + data.val.size < len(TEXT)  # merges made the sequence shorter


def test_directory_corpus_reads_every_file_in_order(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("bravo", encoding="utf-8")
    (folder / "a.txt").write_text("alpha", encoding="utf-8")
    (folder / "sub" / "c.txt").write_text("charlie", encoding="utf-8")
    (folder / ".hidden").write_text("never", encoding="utf-8")
    corpus = path_corpus(folder)
    assert corpus.text == "alpha\n\nbravo\n\ncharlie"
    assert corpus.name == "texts"


def test_default_corpus_needs_no_network():
    corpus = load_corpus()
    assert corpus.name == "pydoc" and len(corpus.text) > 100_000


# -- errors ---------------------------------------------------------------------------


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(MinigptError, match="does not exist"):
        load_corpus(data=str(tmp_path / "nope.txt"))


def test_empty_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(MinigptError, match="no text"):
        load_corpus(data=str(empty))


def test_non_utf8_file_names_file_and_position(tmp_path, data_dir):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("line one\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(MinigptError, match=r"latin1\.txt is not UTF-8.*0xe9 at offset 12 \(line 2\)"):
        prepare(load_corpus(data=str(bad)), "char")
    assert not data_dir.exists() or not any(data_dir.iterdir())  # nothing half-written


def test_too_few_tokens_for_block_size_is_an_error(text_file):
    data = prepare(load_corpus(data=str(text_file)), "char")
    check_block_size(data, data.val.size - 1)
    with pytest.raises(MinigptError, match="fewer than block_size"):
        check_block_size(data, data.val.size)


def test_unknown_dataset_and_tokenizer_are_errors(text_file):
    with pytest.raises(MinigptError, match="unknown --dataset"):
        load_corpus("wikipedia")
    with pytest.raises(MinigptError, match="unknown --tokenizer"):
        prepare(load_corpus(data=str(text_file)), "words")
    with pytest.raises(MinigptError, match="above 256"):
        prepare(load_corpus(data=str(text_file)), "bpe:12")


# -- batches ----------------------------------------------------------------------------


def test_get_batch_gives_shifted_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    rng = np.random.default_rng(0)
    x, y = get_batch(tokens, batch_size=8, block_size=16, rng=rng)
    assert x.shape == y.shape == (8, 16) and x.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)  # consecutive tokens of the stream
    assert y.max() < 1000


def test_get_batch_reaches_the_last_token():
    tokens = np.arange(10, dtype=np.uint16)
    rng = np.random.default_rng(0)
    seen = {int(v) for _ in range(50) for v in get_batch(tokens, 4, 9, rng)[1].ravel()}
    assert 9 in seen  # block_size + 1 == len(tokens): the only window is the whole stream


# -- the Shakespeare download, from a local HTTP server ----------------------------------------


@pytest.fixture
def http_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_shakespeare_downloads_once_and_checks_sha256(http_server, data_dir, monkeypatch):
    served, url = http_server
    (served / "input.txt").write_text(TEXT, encoding="utf-8")
    monkeypatch.setenv("MINIGPT_SHAKESPEARE_URL", f"{url}/input.txt")
    monkeypatch.setenv("MINIGPT_SHAKESPEARE_SHA256", hashlib.sha256(TEXT.encode()).hexdigest())
    corpus = load_corpus("shakespeare")
    assert corpus.text == TEXT
    assert (data_dir / "shakespeare" / "input.txt").is_file()
    (served / "input.txt").unlink()  # a second load must not need the server
    assert load_corpus("shakespeare").text == TEXT


def test_shakespeare_with_wrong_checksum_keeps_nothing(http_server, data_dir, monkeypatch):
    served, url = http_server
    (served / "input.txt").write_text(TEXT, encoding="utf-8")
    monkeypatch.setenv("MINIGPT_SHAKESPEARE_URL", f"{url}/input.txt")
    with pytest.raises(MinigptError, match="sha256"):  # the default checksum is the real file's
        load_corpus("shakespeare")
    assert not (data_dir / "shakespeare" / "input.txt").exists()


def test_shakespeare_offline_says_how_to_supply_the_file(http_server, data_dir, monkeypatch):
    _, url = http_server
    monkeypatch.setenv("MINIGPT_SHAKESPEARE_URL", f"{url}/missing.txt")
    with pytest.raises(MinigptError, match="save it as .*shakespeare.input.txt"):
        load_corpus("shakespeare")


# -- folders of files, data folder names (issue 11.6) -----------------------------------------


def test_a_folder_of_python_sources_skips_pycache_and_binary_files(tmp_path, capsys):
    import py_compile

    folder = tmp_path / "src"
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg" / "mod.py").write_text("def f():\n    return 'é'\n", encoding="utf-8")
    (folder / "README").write_text("read me\n", encoding="utf-8")
    py_compile.compile(str(folder / "pkg" / "mod.py"), doraise=True)  # pkg/__pycache__/mod.cpython-3X.pyc
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (folder / ".git").mkdir()
    (folder / ".git" / "index").write_bytes(b"DIRC\0\0\0\2")
    assert list((folder / "pkg" / "__pycache__").glob("*.pyc"))
    corpus = path_corpus(folder)
    assert corpus.text == "read me\n\n\ndef f():\n    return 'é'\n"
    out = capsys.readouterr().out
    assert out.strip() == f"--data {folder}: skipped 2 non-text file(s): 1 under __pycache__; 1 binary (logo.png)"


def test_a_folder_still_refuses_text_in_another_encoding(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("fine\n", encoding="utf-8")
    (folder / "b.txt").write_bytes("caf\xe9\n".encode("latin-1"))  # no NUL: text, in Latin-1
    with pytest.raises(MinigptError, match=r"b\.txt is not UTF-8 text.*convert it to UTF-8"):
        path_corpus(folder)


def test_a_binary_file_or_a_folder_without_text_is_an_error(tmp_path):
    blob = tmp_path / "weights.bin"
    blob.write_bytes(b"\0\1\2\3" * 100)
    with pytest.raises(MinigptError, match="is a binary file"):
        path_corpus(blob)
    folder = tmp_path / "only_pycache" / "__pycache__"
    folder.mkdir(parents=True)
    (folder / "x.pyc").write_bytes(b"\xa7\r\r\n\0\0\0\0")
    with pytest.raises(MinigptError, match="no text files in it"):
        path_corpus(folder.parent)


@pytest.mark.parametrize("spec", ["char", "bpe:300"])
def test_a_checkpoints_tokenizer_never_shares_the_specs_folder(tmp_path, text_file, capsys, spec):
    """A run on corpus.txt with a checkpoint's tokenizer (built on another text) and one with --tokenizer
    built on corpus.txt itself each keep their own folder: neither rebuilds the other's."""
    from minigpt.data import build_tokenizer

    other_text = TEXT + "Quizzical Jove, vex'd by the wax!\n"
    theirs = build_tokenizer(spec, other_text, other_text[: int(0.9 * len(other_text))])
    label = spec.replace(":", "")
    ours = prepare(load_corpus(data=str(text_file)), spec)
    given = prepare(load_corpus(data=str(text_file)), tokenizer=theirs)
    assert ours.dir.name == f"corpus_{label}"
    assert re.fullmatch(rf"corpus_{label}-[0-9a-f]{{8}}", given.dir.name)
    capsys.readouterr()
    for _ in range(2):  # each reuses its own folder, in any order
        assert prepare(load_corpus(data=str(text_file)), spec).dir == ours.dir
        assert prepare(load_corpus(data=str(text_file)), tokenizer=theirs).dir == given.dir
    assert "preparing" not in capsys.readouterr().out
