"""Speculative decoding: greedy output equals plain decoding's; sampling keeps the target's distribution."""

import math

import numpy as np
import pytest

from minigpt.errors import MinigptError
from minigpt.generation import generate
from minigpt.model import GPT, GPTConfig
from minigpt.speculative import accept_drafts, prompt_lookup_candidates

SWITCHES = {"learned": {}, "rotary": dict(position="rotary", norm="rmsnorm", activation="swiglu", n_kv_head=1)}


def model_of(position="learned", n_layer=2, n_embd=16, block_size=16, vocab_size=7, seed=0, scale=4.0):
    model = GPT(GPTConfig(**{**dict(n_layer=n_layer, n_head=2, n_embd=n_embd, block_size=block_size,
                                    vocab_size=vocab_size), **SWITCHES[position]}), dtype="float64", seed=seed)
    for p in model.params.values():
        p *= scale  # peakier distributions: drafts get accepted and rejected
    return model


def test_prompt_lookup_candidates_follow_hugging_faces_rule():
    assert prompt_lookup_candidates([5, 1, 2, 3, 4, 9, 1, 2], 3).tolist() == [3, 4, 9]  # the bigram 1 2
    assert prompt_lookup_candidates([5, 1, 2, 3, 9, 2], 2).tolist() == [3, 9]  # no bigram: the unigram 2
    assert prompt_lookup_candidates([7, 1, 7, 2, 7], 5).tolist() == [1, 7, 2, 7]  # the first occurrence wins
    assert prompt_lookup_candidates([1, 2, 3], 4).tolist() == []


@pytest.mark.parametrize("position", SWITCHES)
@pytest.mark.parametrize("window_shift", [None, 1, 6])
def test_greedy_speculative_equals_plain_decoding_past_block_size(position, window_shift):
    """Many prompts, 40 tokens past a context of 16: prompt lookup and a draft model give plain decoding's tokens."""
    model = model_of(position)
    draft = model_of("learned", n_layer=1, n_embd=8, block_size=8, seed=1)
    rng = np.random.default_rng(0)
    for length in (1, 3, 8, 15, 16, 23):
        prompt = rng.integers(0, 7, (1, length))
        plain = generate(model, prompt, 40, temperature=0, window_shift=window_shift)
        for speculative in (dict(prompt_lookup=1), dict(prompt_lookup=5), dict(draft_model=draft)):
            out = generate(model, prompt, 40, temperature=0, window_shift=window_shift, **speculative)
            assert out.tolist() == plain.tolist(), (length, speculative)


def test_greedy_speculative_with_processors_equals_plain():
    model = model_of(vocab_size=11)
    prompt = np.array([[1, 2, 3, 1, 2, 3, 4, 5]])
    controls = dict(temperature=0, repetition_penalty=1.4, frequency_penalty=0.2, no_repeat_ngram_size=3)
    plain = generate(model, prompt, 30, **controls)
    assert generate(model, prompt, 30, prompt_lookup=4, **controls).tolist() == plain.tolist()
    assert generate(model, prompt, 30, draft_model=model_of(vocab_size=11, seed=2), **controls).tolist() == \
        plain.tolist()


def test_speculative_runs_one_sequence_and_refuses_another_vocabulary():
    model = model_of()
    with pytest.raises(MinigptError, match="one sequence"):
        generate(model, np.array([[1], [2]]), 3, prompt_lookup=2)
    with pytest.raises(MinigptError, match="vocabulary"):
        generate(model, np.array([[1]]), 3, draft_model=model_of(vocab_size=9))


def chi2_survival(x, k):
    """P(chi-square with k degrees of freedom >= x): the regularized upper gamma Q(k/2, x/2), in closed form.

    Even k: exp(-h) sum_{i < k/2} h^i / i!; odd k: erfc(sqrt h) + exp(-h) sum_{1 <= i <= (k-1)/2} h^(i-1/2) / G(i+1/2),
    with h = x / 2."""
    h = x / 2
    if k % 2 == 0:
        term = total = math.exp(-h)
        for i in range(1, k // 2):
            term *= h / i
            total += term
        return total
    total, term = math.erfc(math.sqrt(h)), math.exp(-h) * math.sqrt(h) / math.gamma(1.5)
    for i in range(1, (k + 1) // 2):
        total += term
        term *= h / (i + 0.5)
    return total


def test_chi2_survival_gives_the_tables_critical_values():
    for k, x in ((1, 3.841459), (2, 5.991465), (3, 7.814728), (4, 9.487729), (15, 24.995790)):  # p = 0.05
        assert abs(chi2_survival(x, k) - 0.05) < 1e-6
    assert abs(chi2_survival(10.827566, 1) - 1e-3) < 1e-8


def chi_square_p_value(counts, probs):
    """Pearson's chi-square test of `counts` against `probs` (cells of probability 0 left out)."""
    keep = probs > 0
    assert counts[~keep].sum() == 0  # a token of probability 0 is never drawn
    observed, expected = counts[keep], probs[keep] / probs[keep].sum() * counts.sum()
    return chi2_survival(float(((observed - expected) ** 2 / expected).sum()), int(keep.sum()) - 1)


@pytest.mark.parametrize("deterministic", [False, True], ids=["draft_model", "prompt_lookup"])
def test_the_acceptance_rule_keeps_the_targets_distribution(deterministic):
    """First token out of a round with 2 drafts, over many rounds: distributed as p_1 (chi-square, fixed seed)."""
    rng = np.random.default_rng(0)
    V = 5
    p = rng.dirichlet(np.ones(V), 3)  # target: p_1, p_2, p_3
    q = rng.dirichlet(np.ones(V), 2)
    n_draws = 6000
    counts, second = np.zeros(V), np.zeros(V)
    for _ in range(n_draws):
        if deterministic:
            drafts, q_arg = np.array([1, 3]), None
        else:
            drafts, q_arg = np.array([rng.choice(V, p=q[0]), rng.choice(V, p=q[1])]), q
        n, token = accept_drafts(p, q_arg, drafts, rng)
        first = drafts[0] if n >= 1 else token
        counts[first] += 1
        if n >= 1 and first == 1:  # the second token, given the first is 1: distributed as p_2
            second[drafts[1] if n >= 2 else token] += 1
    assert chi_square_p_value(counts, p[0]) > 1e-3
    assert chi_square_p_value(second, p[1]) > 1e-3
    # and the test can fail: the draft's own distribution is rejected
    if not deterministic:
        assert chi_square_p_value(counts, q[0]) < 1e-6


@pytest.mark.parametrize("speculative", ["prompt_lookup", "draft_model"])
def test_speculative_sampling_matches_plain_sampling_end_to_end(speculative):
    """Tokens 1 and 2 after a fixed prompt, vocabulary 4: speculative samples against the exact joint distribution."""
    V = 4
    model = model_of(vocab_size=V, scale=2.0)
    prompt = np.array([[0, 1, 2, 0, 1]])
    options = dict(prompt_lookup=3) if speculative == "prompt_lookup" else dict(
        draft_model=model_of(vocab_size=V, n_layer=1, n_embd=8, seed=5, scale=2.0))
    rng = np.random.default_rng(1)
    joint = np.zeros((V, V))
    for _ in range(1500):
        out = generate(model, prompt, 2, temperature=0.9, top_p=0.95, seed=rng, **options)[0, -2:]
        joint[out[0], out[1]] += 1
    from minigpt.sampling import sampling_probs

    def probs_after(ids):
        return sampling_probs(model.forward(np.array([ids]))[0][:, -1], 0.9, None, 0.95)[0]

    first = probs_after(prompt[0].tolist())
    exact = np.array([first[a] * probs_after(prompt[0].tolist() + [a]) for a in range(V)])
    assert chi_square_p_value(joint.ravel(), exact.ravel()) > 1e-3
