"""Write tests/fixtures/generation_processors.json: Hugging Face's logits processors on made-up logits.

    /work/refvenv/bin/python scripts/bench/make_generation_reference.py

Runs transformers' RepetitionPenaltyLogitsProcessor, NoRepeatNGramLogitsProcessor,
TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper and MinPLogitsWarper
(each alone, and chained in generate()'s order) on random logits and token
histories, and saves inputs and outputs. tests/test_logits_processors.py
compares minigpt's processors to them without importing torch. Only this script
needs torch and transformers.
"""

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "generation_processors.json"
B, V, T = 4, 40, 24


def made_up(seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((B, V)) * 3).astype(np.float64)
    histories = rng.integers(0, 12, (B, T))  # few distinct ids: repeated n-grams occur
    histories[1, -2:] = histories[1, 3:5]  # a bigram that certainly repeats
    return logits, histories


def run(processors, logits, histories):
    scores = torch.tensor(logits, dtype=torch.float64)
    out = LogitsProcessorList(processors)(torch.tensor(histories), scores)
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in out.numpy()]


def main():
    cases = []
    settings = [
        ("repetition_penalty", dict(repetition_penalty=1.3), lambda s: [RepetitionPenaltyLogitsProcessor(1.3)]),
        ("repetition_penalty_below_1", dict(repetition_penalty=0.7),
         lambda s: [RepetitionPenaltyLogitsProcessor(0.7)]),
        ("no_repeat_ngram_2", dict(no_repeat_ngram_size=2), lambda s: [NoRepeatNGramLogitsProcessor(2)]),
        ("no_repeat_ngram_3", dict(no_repeat_ngram_size=3), lambda s: [NoRepeatNGramLogitsProcessor(3)]),
        ("no_repeat_ngram_1", dict(no_repeat_ngram_size=1), lambda s: [NoRepeatNGramLogitsProcessor(1)]),
        ("temperature", dict(temperature=0.7), lambda s: [TemperatureLogitsWarper(0.7)]),
        ("top_k", dict(temperature=1.0, top_k=7), lambda s: [TopKLogitsWarper(7)]),
        ("top_p", dict(temperature=1.0, top_p=0.8), lambda s: [TopPLogitsWarper(0.8)]),
        ("min_p", dict(temperature=1.0, min_p=0.1), lambda s: [MinPLogitsWarper(0.1)]),
        ("all_in_order", dict(repetition_penalty=1.2, no_repeat_ngram_size=2, temperature=0.8, top_k=20, top_p=0.9,
                              min_p=0.05),
         lambda s: [RepetitionPenaltyLogitsProcessor(1.2), NoRepeatNGramLogitsProcessor(2),
                    TemperatureLogitsWarper(0.8), TopKLogitsWarper(20), TopPLogitsWarper(0.9), MinPLogitsWarper(0.05)]),
    ]
    for seed, (name, kwargs, make) in enumerate(settings):
        logits, histories = made_up(seed)
        cases.append(dict(name=name, settings=kwargs, logits=logits.tolist(), histories=histories.tolist(),
                          expected=run(make(kwargs), logits, histories)))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dict(transformers=transformers.__version__, torch=torch.__version__,
                                   note="expected: processed scores, null for -inf", cases=cases)) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases; transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
