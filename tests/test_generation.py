"""Samplers on hand-made distributions, the KV-cache decoding loop, streaming text."""

import numpy as np
import pytest

from minigpt.errors import MinigptError
from minigpt.generation import (
    StreamDecoder,
    check_sampling_args,
    sample_next,
    sampling_probs,
    top_k_mask,
    top_p_mask,
)

# ---------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------

PROBS = np.array([0.05, 0.5, 0.15, 0.3])  # sorted: token 1, 3, 2, 0


def logits_of(probs):
    return np.log(np.asarray(probs, dtype=np.float64))[None, :]


def draws(logits, n, seed=0, **kwargs):
    """n independent draws from one row of logits (as n rows of a batch)."""
    return sample_next(np.repeat(logits, n, axis=0), rng=np.random.default_rng(seed), **kwargs)


def assert_frequencies(samples, expected, n_sigma=5):
    """Empirical frequencies within n_sigma binomial standard deviations of `expected`."""
    n = len(samples)
    counts = np.bincount(samples, minlength=len(expected))
    assert counts[np.asarray(expected) == 0].sum() == 0, "a token outside the support was drawn"
    sigma = np.sqrt(n * expected * (1 - expected))
    assert np.all(np.abs(counts - n * expected) <= n_sigma * sigma + 1e-9), (counts, n * expected)


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-0.1), dict(temperature=float("nan")), dict(top_p=0.0), dict(top_p=1.5), dict(top_p=-1), dict(top_k=0), dict(top_k=2.5)],
)
def test_bad_sampling_settings_are_user_errors(kwargs):
    with pytest.raises(MinigptError):
        check_sampling_args(**kwargs)
    with pytest.raises(MinigptError):
        sample_next(logits_of(PROBS), **kwargs)


def test_greedy_is_argmax_with_ties_to_the_lowest_id():
    logits = np.array([[0.0, 3.0, 1.0, 3.0], [5.0, -1.0, 2.0, 0.0]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]
    # top-k / top-p cannot change a greedy choice
    assert sample_next(logits, temperature=0, top_k=1, top_p=0.1).tolist() == [1, 0]


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = np.array([[1.0, 2.0, 2.0, 2.0, 0.0, 2.0]])
    for k in range(1, 7):
        kept = np.flatnonzero(top_k_mask(logits, k)[0])
        assert len(kept) == k
    # the k-th value is tied four ways: the lower ids win
    assert np.flatnonzero(top_k_mask(logits, 2)[0]).tolist() == [1, 2]
    assert np.flatnonzero(top_k_mask(logits, 5)[0]).tolist() == [0, 1, 2, 3, 5]
    assert top_k_mask(np.zeros((1, 5)), 3)[0].tolist() == [True, True, True, False, False]


def test_top_k_matches_a_sort_on_random_rows():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((5, 300))
    for k in (1, 7, 299, 300, 1000):
        expected = np.zeros_like(logits, dtype=bool)
        np.put_along_axis(expected, np.argsort(-logits, axis=-1)[:, :k], True, axis=-1)
        assert np.array_equal(top_k_mask(logits, k), expected)


@pytest.mark.parametrize(
    "p, support",
    [(0.3, [1]), (0.49, [1]), (0.51, [1, 3]), (0.79, [1, 3]), (0.81, [1, 3, 2]), (0.94, [1, 3, 2]), (0.96, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, support):
    kept = np.flatnonzero(top_p_mask(PROBS[None, :], p)[0])
    assert sorted(kept.tolist()) == sorted(support)


def test_top_p_at_an_exact_boundary_and_with_ties():
    # two tokens of probability exactly 0.5: the first one alone reaches p = 0.5
    probs = np.array([[0.0, 0.5, 0.5]])
    assert top_p_mask(probs, 0.5)[0].tolist() == [False, True, False]
    assert top_p_mask(probs, 0.5000001)[0].tolist() == [False, True, True]


@pytest.mark.parametrize(
    "kwargs, support",
    [
        (dict(), [0, 1, 2, 3]),
        (dict(top_k=2), [1, 3]),
        (dict(top_p=0.7), [1, 3]),
        (dict(top_k=3, top_p=0.7), [1, 3]),
        (dict(top_k=3, top_p=0.99), [1, 2, 3]),
    ],
)
def test_sampled_frequencies_follow_the_filtered_distribution(kwargs, support):
    expected = np.zeros_like(PROBS)
    expected[support] = PROBS[support] / PROBS[support].sum()
    np.testing.assert_allclose(sampling_probs(logits_of(PROBS), **kwargs)[0], expected, atol=1e-12)
    assert_frequencies(draws(logits_of(PROBS), 20_000, **kwargs), expected)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_sharpens_or_flattens(temperature):
    expected = PROBS ** (1 / temperature) / (PROBS ** (1 / temperature)).sum()
    samples = draws(logits_of(PROBS), 20_000, temperature=temperature)
    assert_frequencies(samples, expected)
    # and it is not the untempered distribution
    assert np.abs(np.bincount(samples, minlength=4) / 20_000 - PROBS).max() > 0.03


def test_a_seed_makes_sampling_reproducible():
    logits = np.random.default_rng(0).standard_normal((4, 1000))
    a = sample_next(logits, top_p=0.9, rng=np.random.default_rng(7))
    b = sample_next(logits, top_p=0.9, rng=np.random.default_rng(7))
    assert np.array_equal(a, b)
    many = [sample_next(logits, rng=np.random.default_rng(s)) for s in range(5)]
    assert any(not np.array_equal(many[0], m) for m in many[1:])


def test_float32_logits_and_minus_infinity_are_handled():
    logits = np.array([[-np.inf, 0.0, -np.inf, 1.0]], dtype=np.float32)
    samples = draws(logits, 2000)
    assert set(samples.tolist()) <= {1, 3}


# ---------------------------------------------------------------------------
# Streaming text
# ---------------------------------------------------------------------------


class DecodeOnlyTokenizer:
    """One token per byte, with only `decode` (the StreamDecoder's fallback path)."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


class ByteTokenizer(DecodeOnlyTokenizer):
    """The same with `decode_bytes`, like the BPE tokenizer."""

    def decode_bytes(self, ids):
        return bytes(ids)


@pytest.mark.parametrize("tokenizer", [ByteTokenizer(), DecodeOnlyTokenizer()])
def test_stream_decoder_holds_split_characters_back(tokenizer):
    text = "naïve 日本 ok 🙂!"
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.push([b]) for b in text.encode("utf-8")] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    # the first byte of a two-byte character gives nothing yet
    decoder = StreamDecoder(tokenizer)
    assert decoder.push(list("ï".encode("utf-8"))[:1]) == ""
    assert decoder.push(list("ï".encode("utf-8"))[1:]) == "ï"


@pytest.mark.parametrize("tokenizer", [ByteTokenizer(), DecodeOnlyTokenizer()])
def test_stream_decoder_flushes_an_incomplete_character(tokenizer):
    decoder = StreamDecoder(tokenizer)
    assert decoder.push([ord("a"), 0xE6]) == "a"
    assert decoder.flush() == "\ufffd"
