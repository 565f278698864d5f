"""scripts/prepare_data.py and minigpt.preparation: streamed, parallel, sharded, resumable."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minigpt import preparation
from minigpt.data import read_tokens
from minigpt.errors import MinigptError
from minigpt.preparation import prepare_shards
from minigpt.shards import open_shards
from minigpt.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
GPT2_DIR = os.environ.get("MINIGPT_GPT2_TOKENIZER_DIR")
needs_gpt2 = pytest.mark.skipif(not GPT2_DIR, reason="MINIGPT_GPT2_TOKENIZER_DIR (encoder.json, vocab.bpe) not set")

DOCS = [f"Document {i}: the quick brown fox jumps over {i * 7} lazy dogs.\n\nIt's done!  Twice   spaced.\n" * (1 + i % 5)
        for i in range(60)]


def all_tokens(out: Path, meta: dict) -> np.ndarray:
    """Every token of a shard folder, validation shards first (the order of the token stream)."""
    names = meta["shards"]["val"] + meta["shards"]["train"]
    return np.concatenate([np.asarray(read_tokens(out / n)) for n in names])


def write_jsonl_gz(path, docs):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc, "id": 1}) + "\n")


@pytest.fixture
def small_tasks(monkeypatch):
    monkeypatch.setattr(preparation, "TASK_CHARS", 300)  # many tasks, pieces cut inside text files


@needs_gpt2
@pytest.mark.parametrize("num_proc", [1, 2])
def test_jsonl_gz_documents_are_joined_with_end_of_text(tmp_path, small_tasks, num_proc):
    write_jsonl_gz(tmp_path / "corpus.jsonl.gz", DOCS)
    out, meta = prepare_shards(tmp_path / "corpus.jsonl.gz", GPT2_DIR, out=tmp_path / "out", num_proc=num_proc,
                               shard_tokens=700, val_tokens=1000, progress=False)
    tokenizer = BPETokenizer.load(GPT2_DIR)
    expected = np.concatenate([[50256] + tokenizer.encode_ordinary(doc) for doc in DOCS])
    assert np.array_equal(all_tokens(out, meta), expected)
    assert meta["val_tokens"] == 1000 and len(meta["shards"]["val"]) == 2  # 700 + 300
    assert all(read_tokens(out / n).size == 700 for n in meta["shards"]["train"][:-1])
    data = open_shards(out)
    assert data.val.size == 1000 and data.train.size == expected.size - 1000
    assert isinstance(data.tokenizer, BPETokenizer) and data.tokenizer.eot_token == 50256


@needs_gpt2
def test_a_text_file_cut_into_pieces_tokenizes_as_a_whole(tmp_path, small_tasks):
    text = "".join(DOCS)
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    out, meta = prepare_shards(tmp_path / "big.txt", GPT2_DIR, out=tmp_path / "out", num_proc=1,
                               shard_tokens=10_000, val_tokens=50, progress=False)
    expected = [50256] + BPETokenizer.load(GPT2_DIR).encode_ordinary(text)
    assert all_tokens(out, meta).tolist() == expected


def test_a_folder_with_the_char_tokenizer(tmp_path, small_tasks, data_dir):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(DOCS[0])
    (folder / "sub" / "b.txt.gz").write_bytes(gzip.compress(DOCS[1].encode()))
    (folder / ".hidden").write_text("never read")
    (folder / "blob.bin").write_bytes(b"\0\1\2")
    out, meta = prepare_shards(folder, "char", num_proc=2, shard_tokens=100, val_tokens=40, progress=False)
    assert out == data_dir / "texts_char"
    tokenizer = load_tokenizer(out / "tokenizer")
    assert isinstance(tokenizer, CharTokenizer)
    joined = DOCS[0] + "\n\n" + DOCS[1]
    assert tokenizer.chars == sorted(set(joined))
    assert all_tokens(out, meta).tolist() == tokenizer.encode(joined)


def test_running_again_does_nothing_and_says_so(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("".join(DOCS))
    out, meta = prepare_shards(tmp_path / "c.txt", "char", out=tmp_path / "o", num_proc=1, shard_tokens=500,
                               progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    prepare_shards(tmp_path / "c.txt", "char", out=tmp_path / "o", num_proc=1, shard_tokens=500, progress=False)
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    with pytest.raises(MinigptError, match="another input or other options"):
        prepare_shards(tmp_path / "c.txt", "char", out=tmp_path / "o", num_proc=1, shard_tokens=400, progress=False)


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"title": "no text"}\n')
    with pytest.raises(MinigptError, match="no string `text` field"):
        prepare_shards(tmp_path / "bad.jsonl", "char", out=tmp_path / "o1", progress=False)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(MinigptError, match="not UTF-8"):
        prepare_shards(tmp_path / "latin1.txt", "char", out=tmp_path / "o2", progress=False)
    with pytest.raises(MinigptError, match="does not exist"):
        prepare_shards(tmp_path / "missing.txt", "char", out=tmp_path / "o3", progress=False)
    with pytest.raises(MinigptError, match="shard_tokens"):
        prepare_shards(tmp_path / "latin1.txt", "char", shard_tokens=0, progress=False)
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_data.py"), "--data", str(tmp_path / "bad.jsonl"),
                          "--out", str(tmp_path / "o4"), "--progress", "false"], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1


def test_a_killed_preparation_resumes_from_its_last_shard(tmp_path):
    """kill -9 in the middle, run again: the shards equal those of an uninterrupted run, byte for byte."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghij"), size=5)) for _ in range(200)]
    write_jsonl_gz(tmp_path / "c.jsonl.gz", [" ".join(rng.choice(words, size=300)) for _ in range(2000)])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MINIGPT_PREPARE_TASK_CHARS": "3000"}

    def command(out):
        return [sys.executable, str(ROOT / "scripts" / "prepare_data.py"), "--data", str(tmp_path / "c.jsonl.gz"),
                "--out", str(out), "--num_proc", "2", "--shard_tokens", "20000", "--val_tokens", "30000",
                "--progress", "false"]

    subprocess.run(command(tmp_path / "whole"), env=env, check=True, capture_output=True)
    killed = subprocess.Popen(command(tmp_path / "killed"), env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / "killed" / "progress.json"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if len(json.loads(progress.read_text())["shards"]["train"]) >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "meta.json").exists(), "the run finished before it was killed"
    with pytest.raises(MinigptError, match="only partly prepared"):
        open_shards(tmp_path / "killed")
    resumed = subprocess.run(command(tmp_path / "killed"), env=env, check=True, capture_output=True, text=True)
    assert "resuming" in resumed.stdout
    whole = sorted(p.name for p in (tmp_path / "whole").glob("*.bin"))
    assert whole == sorted(p.name for p in (tmp_path / "killed").glob("*.bin")) and len(whole) > 5
    for name in whole:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name
    assert not list((tmp_path / "killed").glob(".*"))  # no temporary files left


def test_the_tokenizer_of_a_training_out_dir(tmp_path):
    text = "".join(DOCS[:3])
    (tmp_path / "c.txt").write_text(text)
    latest = tmp_path / "run" / "latest"
    latest.mkdir(parents=True)
    chars = sorted(set(text)) + ["Z"]  # not the vocabulary the text alone would give
    CharTokenizer(chars).save(latest)
    (latest / "config.json").write_text(json.dumps({"vocab_size": len(chars)}))
    out, meta = prepare_shards(tmp_path / "c.txt", str(tmp_path / "run"), out=tmp_path / "o", num_proc=1,
                               val_tokens=10, progress=False)
    assert load_tokenizer(out / "tokenizer").chars == chars and meta["vocab_size"] == len(chars)
    assert all_tokens(out, meta).tolist() == CharTokenizer(chars).encode(text)
    with pytest.raises(MinigptError, match="holds no checkpoint"):
        prepare_shards(tmp_path / "c.txt", str(tmp_path), out=tmp_path / "o2", progress=False)


def test_train_uses_the_shards_prepared_ahead_of_time(tmp_path, data_dir, capsys):
    from minigpt.trainer import main

    (tmp_path / "c.txt").write_text("".join(DOCS))
    out, _ = prepare_shards(tmp_path / "c.txt", "char", num_proc=1, val_tokens=500, progress=False)
    argv = ["--data", str(tmp_path / "c.txt"), "--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size",
            "16", "--batch_size", "2", "--max_iters", "2", "--eval_iters", "1", "--sample_tokens", "0",
            "--out_dir", str(tmp_path / "run")]
    assert main(argv) == 0
    assert f"training on the shards in {out}" in capsys.readouterr().out
    (tmp_path / "c.txt").write_text("".join(DOCS[:5]))  # the text changed: the shards are not its tokens any more
    with pytest.raises(MinigptError, match="holds shards prepared by scripts/prepare_data.py"):
        main([*argv, "--overwrite"])
