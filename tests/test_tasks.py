"""Zero-shot scoring (minigpt.tasks, scripts/evaluate.py --task) against PyTorch on made-up items.

tests/fixtures/zeroshot/ was written by scripts/bench/make_zeroshot_reference.py
with transformers' GPT2LMHeadModel on the tiny random GPT-2 (float64).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt.errors import MinigptError
from minigpt.model import GPT
from minigpt.tasks import load_items, parse_eval_tasks, score_hellaswag, score_lambada
from minigpt.tokenizer import CharTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
ZEROSHOT = FIXTURES / "zeroshot"
REFERENCE = json.loads((ZEROSHOT / "reference.json").read_text())
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return GPT.from_pretrained(FIXTURES / "gpt2_tiny_hub", dtype="float64").eval()


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer(REFERENCE["chars"])


@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_hellaswag_scores_equal_pytorch(model, tokenizer, batch_size):
    items = load_items("hellaswag", ZEROSHOT / "hellaswag.jsonl")
    scores = score_hellaswag(model, tokenizer, items, batch_size=batch_size, progress=False)
    for ours, ref in zip(scores["items"], REFERENCE["hellaswag"], strict=True):
        np.testing.assert_allclose(ours["sum"], ref["sum"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(ours["mean"], ref["mean"], rtol=0, atol=1e-5)
    labels = [i["label"] for i in items]
    acc = np.mean([np.argmin(r["sum"]) == label for r, label in zip(REFERENCE["hellaswag"], labels)])
    acc_norm = np.mean([np.argmin(r["mean"]) == label for r, label in zip(REFERENCE["hellaswag"], labels)])
    assert scores["acc"] == pytest.approx(acc) and scores["acc_norm"] == pytest.approx(acc_norm)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_lambada_scores_equal_pytorch(model, tokenizer, batch_size):
    items = load_items("lambada", ZEROSHOT / "lambada.jsonl")
    scores = score_lambada(model, tokenizer, items, batch_size=batch_size, progress=False)
    for ours, ref in zip(scores["items"], REFERENCE["lambada"], strict=True):
        assert ours["sum"] == pytest.approx(ref["sum"], abs=1e-5)
        assert (ours["tokens"], ours["correct"]) == (ref["tokens"], ref["correct"])
    assert any(r["correct"] for r in REFERENCE["lambada"])  # the fixture has a hit and misses
    nll = sum(r["sum"] for r in REFERENCE["lambada"]) / sum(r["tokens"] for r in REFERENCE["lambada"])
    assert scores["ppl"] == pytest.approx(math.exp(nll), rel=1e-6)
    assert scores["acc"] == pytest.approx(np.mean([r["correct"] for r in REFERENCE["lambada"]]))


def test_bad_task_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ctx": "a"}\n')
    with pytest.raises(MinigptError, match="lacks endings, label"):
        load_items("hellaswag", bad)
    bad.write_text("not json\n")
    with pytest.raises(MinigptError, match="not JSON"):
        load_items("lambada", bad)
    with pytest.raises(MinigptError, match="does not exist"):
        load_items("lambada", tmp_path / "missing.jsonl")
    with pytest.raises(MinigptError, match="TASK=PATH"):
        parse_eval_tasks("hellaswag")
    assert parse_eval_tasks(f"lambada={bad}") == [("lambada", str(bad))]


def test_evaluate_script_scores_a_task_with_limit(tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    for f in (FIXTURES / "gpt2_tiny_hub").iterdir():
        (checkpoint / f.name).write_bytes(f.read_bytes())
    CharTokenizer(REFERENCE["chars"]).save(checkpoint)
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--checkpoint", str(checkpoint),
                          "--task", "hellaswag", "--data", str(ZEROSHOT / "hellaswag.jsonl"), "--limit", "2"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "2 items" in run.stdout and "acc_norm" in run.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--checkpoint", str(checkpoint),
                          "--task", "lambada", "--data", str(ZEROSHOT / "hellaswag.jsonl")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "lacks text" in bad.stderr


def test_train_scores_eval_tasks_at_every_evaluation(tmp_path):
    from minigpt.loading import load_checkpoint
    from minigpt.tasks import score_task
    from minigpt.trainer import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text((REFERENCE["chars"] + "\n") * 50 + "the cat sat on the mat. " * 40)
    tasks = f"hellaswag={ZEROSHOT / 'hellaswag.jsonl'},lambada={ZEROSHOT / 'lambada.jsonl'}"
    argv = ["--data", corpus, "--n_layer", 1, "--n_head", 2, "--n_embd", 16, "--block_size", 16, "--batch_size", 4,
            "--max_iters", 6, "--eval_interval", 3, "--eval_iters", 1, "--sample_tokens", 0, "--workers", 1,
            "--eval_tasks", tasks, "--out_dir", tmp_path / "run"]
    assert main([str(a) for a in argv]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if "val_loss" in r]
    assert [r["iter"] for r in evaluated] == [0, 3, 6]
    for r in evaluated:
        assert {"hellaswag_acc", "hellaswag_acc_norm", "lambada_acc", "lambada_ppl"} <= r.keys()
    model, tokenizer, _ = load_checkpoint(tmp_path / "run" / "latest")
    scores = score_task("lambada", model, tokenizer, load_items("lambada", ZEROSHOT / "lambada.jsonl"), progress=False)
    assert evaluated[-1]["lambada_ppl"] == pytest.approx(scores["ppl"], rel=1e-5)
