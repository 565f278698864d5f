"""The steering controls: Hugging Face's processors in its fixtures, OpenAI's penalties, bad values, stop strings."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt.errors import MinigptError
from minigpt.generation import StopStrings, generate, generate_stream
from minigpt.logits_processors import LogitsProcessors, banned_ngram_tokens, frequency_presence_penalty
from minigpt.model import GPT, GPTConfig
from minigpt.sampling import sampling_probs, softmax
from minigpt.tokenizer import CharTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "generation_processors.json"
CASES = json.loads(FIXTURE.read_text())["cases"]
PROCESSOR_KEYS = ("repetition_penalty", "no_repeat_ngram_size")


def as_logits(rows):
    return np.array([[-np.inf if v is None else v for v in row] for row in rows])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_processors_equal_hugging_face_on_its_fixtures(case):
    """Processors: the processed logits; warpers: the distribution softmax(HF's scores) samples from (1e-6)."""
    settings, logits, histories = case["settings"], np.array(case["logits"]), case["histories"]
    expected = as_logits(case["expected"])
    processors = LogitsProcessors(histories, logits.shape[1], np,
                                  **{k: v for k, v in settings.items() if k in PROCESSOR_KEYS})
    z = processors(logits)
    if "temperature" not in settings:
        assert np.array_equal(np.isinf(z), np.isinf(expected))
        np.testing.assert_allclose(z[np.isfinite(z)], expected[np.isfinite(expected)], rtol=0, atol=1e-6)
        assert not np.array_equal(z, logits)  # the fixture exercises the rule
    else:
        warpers = {k: settings.get(k) for k in ("temperature", "top_k", "top_p", "min_p")}
        probs = sampling_probs(z, **warpers)
        np.testing.assert_allclose(probs, softmax(expected), rtol=0, atol=1e-6)


def test_frequency_and_presence_penalties_follow_openais_formula():
    rng = np.random.default_rng(0)
    logits, prompt, generated = rng.standard_normal((2, 9)), [[1, 2], [3]], [[4, 4, 1], [0, 0, 0]]
    processors = LogitsProcessors(prompt, 9, np, frequency_penalty=0.5, presence_penalty=0.25)
    for step in zip(*generated):
        processors.append(np.array(step))
    expected = logits.copy()
    for b, gen in enumerate(generated):  # logit[j] -= f * count[j] + q * (count[j] > 0), generated tokens only
        for j in set(gen):
            expected[b, j] -= 0.5 * gen.count(j) + 0.25
    np.testing.assert_allclose(processors(logits), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(frequency_presence_penalty(logits, np.zeros((2, 9)), 0.5, 0.25), logits)
    processors.truncate(1)  # speculative decoding's rollback: back to the first generated token
    expected = logits.copy()
    expected[0, 4] -= 0.75
    expected[1, 0] -= 0.75
    np.testing.assert_allclose(processors(logits), expected, rtol=0, atol=1e-12)


def test_banned_ngrams_are_the_continuations_of_the_last_n_minus_1_tokens():
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3).tolist() == [3]
    assert banned_ngram_tokens([1, 2, 3, 1, 2, 5, 1], 2).tolist() == [2]
    assert banned_ngram_tokens([1, 2], 3).tolist() == []


@pytest.mark.parametrize("bad, fragment", [
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(repetition_penalty=float("nan")), "repetition"),
    (dict(frequency_penalty=3.0), "frequency_penalty"), (dict(presence_penalty=-2.5), "presence_penalty"),
    (dict(no_repeat_ngram_size=0), "no_repeat_ngram_size"), (dict(no_repeat_ngram_size=1.5), "no_repeat"),
    (dict(min_p=1.5), "min_p"), (dict(stop=""), "stop"), (dict(stop=["a", ""]), "stop"),
    (dict(stop="x"), "tokenizer"), (dict(prompt_lookup=0), "prompt_lookup"),
])
def test_bad_values_are_minigpt_errors(bad, fragment):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=7), seed=0)
    with pytest.raises(MinigptError, match=fragment):
        generate(model, np.array([[1, 2]]), 3, **bad)


def tiny_model(vocab_size, seed=0, **switches):
    model = GPT(GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=vocab_size),
                             **switches}), dtype="float64", seed=seed)
    for p in model.params.values():
        p *= 10  # peaked distributions: greedy decoding repeats itself, so the controls have work to do
    return model


def test_greedy_with_processors_equals_a_loop_over_full_forwards():
    """generate_stream's processed greedy tokens = argmax of HF's rules applied by hand to full-forward logits."""
    model = tiny_model(11)
    prompt = [3, 1, 4, 1, 5]
    ids = generate(model, np.array([prompt]), 12, temperature=0, repetition_penalty=1.5, frequency_penalty=0.3,
                   presence_penalty=0.2, no_repeat_ngram_size=2)[0].tolist()
    context = list(prompt)
    for _ in range(12):
        z = model.forward(np.array([context]))[0][0, -1].astype(np.float64)
        gen = context[len(prompt):]
        for j in set(context):
            z[j] = z[j] / 1.5 if z[j] > 0 else z[j] * 1.5
        for j in set(gen):
            z[j] -= 0.3 * gen.count(j) + 0.2
        for i in range(len(context) - 1):
            if context[i] == context[-1]:
                z[context[i + 1]] = -np.inf
        context.append(int(np.argmax(z)))
    assert ids == context
    assert ids != generate(model, np.array([prompt]), 12, temperature=0)[0].tolist()  # the controls changed it
    bigrams = list(zip(ids[:-1], ids[1:]))
    assert len(set(bigrams)) == len(bigrams)


def test_a_stop_string_spanning_tokens_ends_the_sequence():
    tokenizer = CharTokenizer.train("abcdefgh\n ")
    model = tiny_model(tokenizer.vocab_size, seed=3)
    prompt = np.array([tokenizer.encode("abc")])
    plain = generate(model, prompt, 30, temperature=0)[0, 3:].tolist()
    text = tokenizer.decode(plain)
    stop = text[5:7]  # two characters: two tokens
    first = text.find(stop)
    out = list(generate_stream(model, prompt, 30, temperature=0, stop=[stop, "never there"], tokenizer=tokenizer))
    assert len(out) == first + len(stop)  # ends at the token that completes the string
    assert tokenizer.decode([int(i[0]) for i in out]).endswith(stop)
    stops = StopStrings(stop, tokenizer, 1)
    assert stops.cut(text) == text[:first]


def test_stop_ends_each_row_of_a_batch_on_its_own():
    tokenizer = CharTokenizer.train("abcdefgh\n ")
    model = tiny_model(tokenizer.vocab_size, seed=3)
    prompts = [tokenizer.encode("abc"), tokenizer.encode("hg")]
    texts = [tokenizer.decode(generate(model, np.array([p]), 20, temperature=0)[0, len(p):].tolist())
             for p in prompts]
    stop = texts[0][4]
    steps = list(generate_stream(model, prompts, 20, temperature=0, stop=stop, tokenizer=tokenizer))
    for b, text in enumerate(texts):
        row = tokenizer.decode([int(s[b]) for s in steps])
        if stop in text:
            assert row.startswith(text[: text.index(stop) + 1])  # then padding
        else:
            assert row == text[: len(steps)]


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("option, value", [("--repetition-penalty", "-1"), ("--min-p", "2"),
                                           ("--frequency-penalty", "9"), ("--no-repeat-ngram-size", "0"),
                                           ("--stop", ""), ("--prompt-lookup", "0")])
def test_generate_script_bad_control_is_one_line(option, value):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "generate.py"), option, value], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and option.strip("-").split("-")[0] in lines[0]
