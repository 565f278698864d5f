"""Write tests/fixtures/zeroshot/: made-up HellaSwag and LAMBADA items and their scores from PyTorch (developers only).

    /work/refvenv/bin/python scripts/bench/make_zeroshot_reference.py

The model is the random tiny GPT-2 of tests/fixtures/gpt2_tiny_hub (37-token
vocabulary, 16 positions), loaded with transformers in float64; a text is
tokenized one character per token over the 37 characters of CHARS. Scores follow
llm.c's dev/data/hellaswag.py: the candidate is ctx + " " + ending, the loss is
F.cross_entropy over the ending's tokens only (shifted by one); LAMBADA scores
" " + last word after the context, correct when every token is the argmax.
Writes hellaswag.jsonl, lambada.jsonl and reference.json (chars and per-item scores).
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
CHARS = " abcdefghijklmnopqrstuvwxyz.,;!?'-012"  # 37 characters: token i is CHARS[i]
assert len(CHARS) == 37 and len(set(CHARS)) == 37

HELLASWAG = [
    {"ctx": "the cat", "endings": ["sat on", "ran off", "is red", "ate it"], "label": 0},
    {"ctx": "we go to", "endings": ["the sea", "bed.", "a shop", "it"], "label": 1},
    {"ctx": "a dog", "endings": ["barks!", "can't", "sleeps a lot", "x"], "label": 2},
    {"ctx": "one, two,", "endings": ["three", "four", "ten", "zero-0"], "label": 3},
    {"ctx": "rain; then", "endings": ["sun", "snow?", "wind", "fog"], "label": 1},
]
LAMBADA = [
    {"text": "the cat sat on the mat"},
    {"text": "she said yes to him"},
    {"text": "a b c d e f g h i j k l m n o p"},  # longer than the context: truncated on the left
    {"text": "we ran, we won"},
    {"text": "it is what it is"},
    {"text": "one two three four"},
]


def encode(text):
    return [CHARS.index(c) for c in text]


def continuation_losses(model, context, continuation):
    """(per-token losses, argmax hits) of `continuation` after `context`, keeping the last n_positions + 1 tokens."""
    tokens = (context + continuation)[-(model.config.n_positions + 1):]
    n = min(len(continuation), len(tokens) - 1)
    inputs = torch.tensor([tokens[:-1]])
    logits = model(inputs).logits[0]
    targets = torch.tensor(tokens[-n:])
    scored = logits[-n:]
    losses = F.cross_entropy(scored, targets, reduction="none")
    return losses, scored.argmax(-1) == targets


def greedy_item(model):
    """A LAMBADA item the model gets right: a context whose greedy continuation is a space and then letters."""
    for first in CHARS[1:27]:
        for second in CHARS[1:27]:
            tokens = encode(f"{first}{second} {first}")
            for _ in range(4):
                tokens.append(model(torch.tensor([tokens])).logits[0, -1].argmax().item())
            text = "".join(CHARS[t] for t in tokens)
            head, tail = text[:4], text[4:]
            if tail[0] == " " and tail[1] != " ":
                word = tail[1:3] if tail[2] != " " else tail[1]
                return {"text": head + " " + word}
    raise RuntimeError("no context with a greedy last word")


def main():
    out = FIXTURES / "zeroshot"
    out.mkdir(parents=True, exist_ok=True)
    model = GPT2LMHeadModel.from_pretrained(FIXTURES / "gpt2_tiny_hub", torch_dtype=torch.float64).eval()
    reference = {"chars": CHARS, "hellaswag": [], "lambada": []}
    with torch.no_grad():
        LAMBADA.append(greedy_item(model))
        for item in HELLASWAG:
            sums, means = [], []
            for ending in item["endings"]:
                losses, _ = continuation_losses(model, encode(item["ctx"]), encode(" " + ending))
                sums.append(losses.sum().item())
                means.append(losses.mean().item())
            reference["hellaswag"].append({"sum": sums, "mean": means})
        for item in LAMBADA:
            context, word = item["text"].rsplit(" ", 1)
            losses, hits = continuation_losses(model, encode(context), encode(" " + word))
            reference["lambada"].append({"sum": losses.sum().item(), "tokens": len(losses), "correct": bool(hits.all())})
    (out / "hellaswag.jsonl").write_text("".join(json.dumps(i) + "\n" for i in HELLASWAG))
    (out / "lambada.jsonl").write_text("".join(json.dumps(i) + "\n" for i in LAMBADA))
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
