"""Zero-shot evaluations: HellaSwag (completion style, as llm.c) and LAMBADA (last word).

HellaSwag (`hellaswag_val.jsonl`: `ctx`, four `endings`, `label` per line).
Each candidate is encode(ctx) + encode(" " + ending); the model scores only the
ending's tokens e_1..e_n, each predicted from everything before it:

    loss_j = -log p(e_j | ctx, e_<j)       sum = sum_j loss_j       mean = sum / n
    acc      counts an item when argmin_k sum_k  is the label
    acc_norm counts an item when argmin_k mean_k is the label      (llm.c's dev/data/hellaswag.py)

LAMBADA (OpenAI's `lambada_test.jsonl`, one `text` per line). The target is the
last word (after the last space), scored as encode(" " + word) after
encode(context). An item is correct when every token of the word is the
greedy (argmax) prediction; the perplexity is exp of the mean loss per target
token over all items.

Candidates are batched (right-padded with token 0: causal attention keeps the
padding out of the scored positions) and run on the model's device; a
sequence longer than the context keeps its last block_size + 1 tokens.
"""

import json
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minigpt.backend import to_host
from minigpt.errors import MinigptError

TASKS = ("hellaswag", "lambada")


# ---------------------------------------------------------------------------
# Reading the files


def read_jsonl(path, fields: tuple, task: str) -> list[dict]:
    """The records of a JSON-lines file, each checked to have `fields`; one-line errors otherwise."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MinigptError(f"{task} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise MinigptError(f"cannot read {task} file {path} ({err})") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise MinigptError(f"line {number} of {path} is not JSON; give the {task} .jsonl file") from None
        missing = [f for f in fields if not isinstance(item, dict) or f not in item]
        if missing:
            raise MinigptError(f"line {number} of {path} lacks {', '.join(missing)}: not a {task} file")
        items.append(item)
    if not items:
        raise MinigptError(f"{task} file {path} holds no items")
    return items


def load_items(task: str, path) -> list[dict]:
    if task == "hellaswag":
        items = read_jsonl(path, ("ctx", "endings", "label"), task)
        for item in items:
            if not 0 <= int(item["label"]) < len(item["endings"]):
                raise MinigptError(f"{path}: an item's label {item['label']} is not the index of one of its endings")
        return items
    if task == "lambada":
        items = read_jsonl(path, ("text",), task)
        for number, item in enumerate(items, 1):
            if " " not in item["text"].strip():
                raise MinigptError(f"{path}: item {number} has no space, so no last word to predict")
        return items
    raise MinigptError(f"unknown task {task!r}: use {' or '.join(TASKS)}")


def encode(tokenizer, text: str) -> list[int]:
    """Plain text to ids (special-token strings read as text, as llm.c's encode_ordinary)."""
    return tokenizer.encode_ordinary(text) if hasattr(tokenizer, "encode_ordinary") else tokenizer.encode(text)


# ---------------------------------------------------------------------------
# Scoring


def continuation_losses(model, pairs, batch_size: int = 16):
    """For each (context ids, continuation ids): the per-token losses and greedy hits of the continuation.

    Returns a list of (losses (n,), hits (n,) bool) in the order of `pairs`.
    """
    block_size = model.config.block_size
    xp = model.xp
    rows = []
    for context, continuation in pairs:
        if not continuation:
            raise MinigptError("a candidate continuation encodes to no tokens")
        tokens = (list(context) + list(continuation))[-(block_size + 1):]
        n = min(len(continuation), len(tokens) - 1)
        rows.append((tokens, n))
    results = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        length = max(len(tokens) - 1 for tokens, _ in chunk)
        inputs = np.zeros((len(chunk), length), dtype=np.int64)
        for r, (tokens, _) in enumerate(chunk):
            inputs[r, :len(tokens) - 1] = tokens[:-1]
        logits, _ = model.forward(xp.asarray(inputs))  # in the model's dtype: a float64 copy of GPT-2's would be 4x
        # log p(target) = logit[target] - logsumexp(logits), on the device; only (B, T) values come back
        top = logits.max(axis=-1, keepdims=True)
        logsumexp = to_host(xp.log(xp.exp(logits - top).sum(axis=-1)) + top[..., 0])
        argmax = to_host(logits.argmax(axis=-1))
        for r, (tokens, n) in enumerate(chunk):
            positions = np.arange(len(tokens) - 1 - n, len(tokens) - 1)  # the inputs that predict the continuation
            targets = np.asarray(tokens[-n:], dtype=np.int64)
            picked = to_host(logits[r, xp.asarray(positions), xp.asarray(targets)]).astype(np.float64)
            results.append((logsumexp[r, positions] - picked, argmax[r, positions] == targets))
    return results


def score_hellaswag(model, tokenizer, items, batch_size: int = 16, progress: bool = True) -> dict:
    """acc and acc_norm over `items`, and per item the summed and mean loss of each ending."""
    model.eval()
    per_item, correct, correct_norm = [], 0, 0
    per_batch = max(1, batch_size // 4)
    for start in tqdm(range(0, len(items), per_batch), desc="hellaswag", unit="batch", disable=not progress):
        chunk = items[start:start + per_batch]
        pairs = [(encode(tokenizer, item["ctx"]), encode(tokenizer, " " + ending))
                 for item in chunk for ending in item["endings"]]
        losses = iter(continuation_losses(model, pairs, batch_size))
        for item in chunk:
            scored = [next(losses)[0] for _ in item["endings"]]
            sums = [float(s.sum()) for s in scored]
            means = [float(s.mean()) for s in scored]
            pred, pred_norm = int(np.argmin(sums)), int(np.argmin(means))
            label = int(item["label"])
            correct += pred == label
            correct_norm += pred_norm == label
            per_item.append({"sum": sums, "mean": means, "pred": pred, "pred_norm": pred_norm, "label": label})
    n = len(items)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n, "items": per_item}


def split_last_word(text: str) -> tuple[str, str]:
    """("the context", "word") of a LAMBADA text: the target is what follows the last space."""
    context, word = text.strip().rsplit(" ", 1)
    return context, word


def score_lambada(model, tokenizer, items, batch_size: int = 16, progress: bool = True) -> dict:
    """Last-word accuracy and perplexity over `items`, and per item the word's summed loss and hit."""
    model.eval()
    per_item, nll, n_tokens = [], 0.0, 0
    for start in tqdm(range(0, len(items), batch_size), desc="lambada", unit="batch", disable=not progress):
        chunk = items[start:start + batch_size]
        pairs = []
        for item in chunk:
            context, word = split_last_word(item["text"])
            pairs.append((encode(tokenizer, context), encode(tokenizer, " " + word)))
        for losses, hits in continuation_losses(model, pairs, batch_size):
            nll += float(losses.sum())
            n_tokens += losses.size
            per_item.append({"sum": float(losses.sum()), "tokens": int(losses.size), "correct": bool(hits.all())})
    n = len(items)
    return {"acc": sum(i["correct"] for i in per_item) / n, "ppl": math.exp(nll / n_tokens), "n": n,
            "items": per_item}


def score_task(task: str, model, tokenizer, items, batch_size: int = 16, progress: bool = True) -> dict:
    scorer = {"hellaswag": score_hellaswag, "lambada": score_lambada}[task]
    return scorer(model, tokenizer, items, batch_size, progress)


def summary_fields(task: str, scores: dict) -> dict:
    """The log record's fields for a task: hellaswag_acc, hellaswag_acc_norm, lambada_acc, lambada_ppl."""
    keys = ("acc", "acc_norm") if task == "hellaswag" else ("acc", "ppl")
    return {f"{task}_{key}": scores[key] for key in keys}


def parse_eval_tasks(spec: str | None, option: str = "--eval_tasks") -> list[tuple[str, str]]:
    """"hellaswag=PATH,lambada=PATH" -> [("hellaswag", PATH), ("lambada", PATH)], each file checked to exist."""
    if not spec:
        return []
    tasks = []
    for part in spec.split(","):
        task, sep, path = part.partition("=")
        if not sep or task not in TASKS or not path:
            raise MinigptError(f"{option} {spec!r}: give TASK=PATH[,TASK=PATH] with TASK one of {', '.join(TASKS)}")
        if not Path(path).expanduser().is_file():
            raise MinigptError(f"{option}: {task} file {path} does not exist")
        tasks.append((task, str(Path(path).expanduser())))
    return tasks
