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


SAMPLERS = [dict(temperature=0), dict(), dict(temperature=0.7, top_k=2), dict(top_p=0.9), dict(top_k=3, top_p=0.5)]


@pytest.mark.parametrize("kwargs", SAMPLERS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_infinite_logits_are_an_error_not_an_id(kwargs, bad):
    logits = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.0, -1.0]], dtype=np.float32)
    logits[1, 2] = bad
    with pytest.raises(MinigptError, match=rf"logits hold {bad} \(row 1, token 2\)") as info:
        sample_next(logits, rng=np.random.default_rng(0), **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs", SAMPLERS)
def test_a_row_of_minus_infinity_is_an_error(kwargs):
    logits = np.array([[0.0, 1.0, -np.inf], [-np.inf, -np.inf, -np.inf]])
    with pytest.raises(MinigptError, match="row 1 of the logits is all -inf"):
        sample_next(logits, rng=np.random.default_rng(0), **kwargs)


def test_a_temperature_that_overflows_the_logits_is_an_error():
    with pytest.raises(MinigptError, match=r"logits / temperature 1e-300 hold inf"):
        sample_next(np.array([[1e10, 0.0]]), temperature=1e-300, rng=np.random.default_rng(0))


@pytest.mark.parametrize("kwargs", SAMPLERS)
def test_extreme_finite_logits_give_ids_inside_the_vocabulary(kwargs):
    finfo = np.finfo(np.float32)
    rows = np.array([[finfo.max, finfo.max, -finfo.max, 0.0], [-finfo.max, finfo.tiny, -np.inf, -finfo.max],
                     [1e30, -1e30, 1e30, -np.inf]], dtype=np.float32)
    ids = sample_next(np.repeat(rows, 50, axis=0), rng=np.random.default_rng(0), **kwargs)
    assert ((ids >= 0) & (ids < rows.shape[1])).all()
    assert set(ids[:50].tolist()) <= {0, 1} and set(ids[50:100].tolist()) == {1} and set(ids[100:].tolist()) <= {0, 2}


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


# ---------------------------------------------------------------------------
# The decoding loop on a tiny random model
# ---------------------------------------------------------------------------


def tiny_model(block_size=8, vocab_size=13, dtype="float64", seed=0):
    """A small GPT whose weights are large enough that its argmax is not trivial."""
    from minigpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=block_size, vocab_size=vocab_size), dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        if not name.endswith((".bias", "ln_1.weight", "ln_2.weight", "ln_f.weight")):
            p[...] = rng.standard_normal(p.shape) * 0.3
    return model.eval()


def full_forward_logits(model, ids):
    logits, _ = model.forward(np.asarray(ids)[:, -model.config.block_size :])
    return logits[:, -1, :]


def test_kv_cache_logits_equal_a_full_forward():
    model = tiny_model(block_size=12)
    ids = np.random.default_rng(3).integers(0, 13, size=(3, 12))
    cache = model.new_kv_cache()
    prefill = model.forward_cached(ids[:, :5], cache)
    full, _ = model.forward(ids)
    np.testing.assert_allclose(prefill, full[:, :5], rtol=0, atol=1e-10)
    for t in range(5, 12):
        step = model.forward_cached(ids[:, t : t + 1], cache)
        np.testing.assert_allclose(step[:, 0], full[:, t], rtol=0, atol=1e-10)
    assert cache.length == 12


def test_greedy_generation_with_window_shift_1_is_repeated_argmax_of_full_forwards():
    model = tiny_model(block_size=8)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    out = model.generate(prompt, max_new_tokens=12, temperature=0, window_shift=1)  # slides past block_size = 8
    expected = prompt
    for _ in range(12):
        next_ids = np.argmax(full_forward_logits(model, expected), axis=-1)
        expected = np.concatenate([expected, next_ids[:, None]], axis=1)
    assert out.shape == (2, 15)
    assert np.array_equal(out, expected)
    assert len(set(out[0, 3:].tolist())) > 1, "the test model should not just repeat one token"


# -- the window past block_size -------------------------------------------------------------------

VARIANTS = [dict(), dict(position="rotary"), dict(position="rotary", n_head=4, n_kv_head=2, norm="rmsnorm")]
VARIANT_IDS = ["learned", "rotary", "rotary-gqa"]


def variant_model(block_size, **switches):
    """tiny_model's weights on a model with GPTConfig switches (rotary positions, grouped-query attention)."""
    from minigpt.model import GPT, GPTConfig

    config = GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=16, block_size=block_size, vocab_size=13), **switches})
    model = GPT(config, dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    for name, p in model.params.items():
        if not name.endswith((".bias", "ln_1.weight", "ln_2.weight", "ln_f.weight")):
            p[...] = rng.standard_normal(p.shape) * 0.3
    return model.eval()


def slide(model, prompt_length, n_tokens, window_shift, seed=0):
    """Push n_tokens random ids through a SlidingWindow; yields (ids so far, the window) after each push."""
    from minigpt.generation import SlidingWindow

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 13, size=(2, prompt_length))
    window = SlidingWindow(model, ids, window_shift)
    yield ids, window
    for _ in range(n_tokens):
        next_ids = rng.integers(0, 13, size=2)
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)
        window.push(next_ids)
        yield ids, window


@pytest.mark.parametrize("switches", VARIANTS, ids=VARIANT_IDS)
def test_window_shift_1_sees_the_last_block_size_tokens_at_every_token(switches):
    model = variant_model(8, **switches)
    for ids, window in slide(model, 5, 4 * 8, window_shift=1):
        assert np.array_equal(window.window, ids[:, -8:])
        np.testing.assert_allclose(window.logits, full_forward_logits(model, ids), rtol=0, atol=1e-10)


@pytest.mark.parametrize("switches", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("block_size, window_shift", [(8, None), (8, 3), (8, 8), (9, None), (1, None)])
def test_the_logits_are_a_full_forward_over_the_window_which_moves_by_the_shift(switches, block_size, window_shift):
    """Right after each shift the window holds the last block_size - s + 1 tokens; then it grows to block_size."""
    model = variant_model(block_size, **switches)
    s = window_shift or max(1, block_size // 2)
    lengths = []
    for ids, window in slide(model, 1, 4 * block_size, window_shift):
        length = window.window.shape[1]
        lengths.append(length)
        assert np.array_equal(window.window, ids[:, -length:])
        assert window.cache.length == length
        np.testing.assert_allclose(window.logits, full_forward_logits(model, window.window), rtol=0, atol=1e-10)
    first_full = lengths.index(block_size)
    assert lengths[: first_full + 1] == list(range(1, block_size + 1))  # before the first shift: the whole context
    after = lengths[first_full + 1 :]
    assert after[::s] == [block_size - s + 1] * len(after[::s])  # a shift every s tokens ...
    assert min(after) == block_size - s + 1 and max(after) == block_size  # ... and never less context than that


def test_the_window_costs_one_step_per_token_and_a_pass_every_shift_in_the_same_buffers():
    model = variant_model(8)
    calls = []
    forward_cached = model.forward_cached

    def spy(idx, cache, last_only=False):
        calls.append(idx.shape[1])
        return forward_cached(idx, cache, last_only)

    model.forward_cached = spy
    windows = slide(model, 8, 24, window_shift=None)  # s = 4
    _, window = next(windows)
    buffers = [id(b) for b in window.cache.keys + window.cache.values]
    for _ in windows:
        assert [id(b) for b in window.cache.keys + window.cache.values] == buffers  # reset, never reallocated
    assert calls == [8] + [5, 1, 1, 1] * 6  # prefill; then every 4 tokens one 5-token pass and 3 single steps
    calls.clear()
    list(slide(model, 8, 6, window_shift=1))
    assert calls == [8] * 7  # s = 1: the whole window at every token


def greedy_over_windows(model, prompt, n, window_shift):
    """Greedy decoding by full forwards over the windows that a shift of window_shift defines."""
    block_size = model.config.block_size
    ids, length = prompt, prompt.shape[1]
    for _ in range(n):
        next_ids = np.argmax(model.forward(ids[:, -length:])[0][:, -1], axis=-1)
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)
        length = block_size - window_shift + 1 if length == block_size else length + 1
    return ids


@pytest.mark.parametrize("window_shift", [None, 1, 5, 8])
def test_generation_past_block_size_follows_the_window(window_shift):
    model = tiny_model(block_size=8)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    out = model.generate(prompt, max_new_tokens=30, temperature=0, window_shift=window_shift)
    assert np.array_equal(out, greedy_over_windows(model, prompt, 30, window_shift or 4))


@pytest.mark.parametrize("window_shift", [0, -2, 2.5, 9])
def test_a_bad_window_shift_is_a_user_error(window_shift):
    with pytest.raises(MinigptError, match="window_shift"):
        tiny_model(block_size=8).generate(np.array([[1]]), 3, window_shift=window_shift)


def test_the_window_stays_on_the_device_and_sends_only_the_kept_ids(monkeypatch):
    """Under the CuPy stand-in: the shift copies nothing to the host, and sends only the ids it re-runs."""
    import minigpt.generation as generation
    from minigpt.model import GPT, GPTConfig
    from tests import device_standin

    B, block_size, n = 2, 8, 20
    monkeypatch.setattr(generation, "sample_next_on_device", lambda logits, *args, **kwargs: np.ones(B, dtype=np.int64))
    with device_standin.installed():
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=block_size, vocab_size=11), device="gpu")
        device_standin.TRANSFERS.clear()
        steps = list(generation.generate_stream(model, np.ones((B, block_size), dtype=np.int64), n, seed=0))
        transfers = list(device_standin.TRANSFERS)
    assert len(steps) == n
    assert [t for t in transfers if t[0] == "d2h"] == []  # the sampler's B ids are the only copy back
    sent = [block_size] + ([5, 1, 1, 1] * n)[: n - 1]  # the prompt; then s = 4: the 5 kept ids, 3 single ids
    assert transfers == [("h2d", B * 8 * k) for k in sent]


def test_sampling_after_the_window_slides_uses_the_last_block_size_tokens():
    model = tiny_model(block_size=8)
    prompt = np.random.default_rng(0).integers(0, 13, size=(1, 20))  # longer than the context
    out = model.generate(prompt, max_new_tokens=1, temperature=0)
    assert np.array_equal(out[:, :20], prompt)
    assert out[0, 20] == np.argmax(full_forward_logits(model, prompt)[0])


def test_a_seed_makes_generation_reproducible():
    model = tiny_model()
    prompt = np.array([[1, 2], [3, 4]])
    a = model.generate(prompt, 10, temperature=1.5, top_k=5, seed=11)
    b = model.generate(prompt, 10, temperature=1.5, top_k=5, seed=11)
    assert np.array_equal(a, b)
    others = [model.generate(prompt, 10, temperature=1.5, top_k=5, seed=s) for s in range(3)]
    assert any(not np.array_equal(a, o) for o in others)


def test_sequences_stop_at_the_stop_token_and_are_padded_with_it():
    model = tiny_model()
    prompt = np.zeros((6, 2), dtype=np.int64)
    free = model.generate(prompt, 40, temperature=3.0, seed=5)[:, 2:]
    in_every_row = set.intersection(*(set(row.tolist()) for row in free))
    assert in_every_row, "pick a seed/temperature where some token appears in every row"
    stop = min(in_every_row)
    stopped = model.generate(prompt, 40, temperature=3.0, seed=5, stop_token=stop)[:, 2:]
    first_stops = [np.flatnonzero(row == stop)[0] for row in free]
    assert len(set(first_stops)) > 1, "the rows should stop at different steps"
    for row_free, row_stopped, first in zip(free, stopped, first_stops):
        # identical up to and including the stop token, then padding only
        assert np.array_equal(row_stopped[: first + 1], row_free[: first + 1])
        assert np.all(row_stopped[first:] == stop)
    # every row stopped, so the batch ends at the latest first stop token
    assert stopped.shape == (6, max(first_stops) + 1)


def test_generate_stream_yields_what_generate_returns_and_restores_the_mode():
    from minigpt.generation import generate_stream

    model = tiny_model().train()
    prompt = np.array([[1, 2, 3]])
    steps = list(generate_stream(model, prompt, 5, top_p=0.9, seed=2))
    assert [s.shape for s in steps] == [(1,)] * 5
    assert model.training
    out = model.generate(prompt, 5, top_p=0.9, seed=2)
    assert np.array_equal(out[0, 3:], np.concatenate(steps))
    assert np.array_equal(model.generate(prompt, 0), prompt)


@pytest.mark.parametrize("bad", [np.zeros((1, 0), dtype=np.int64), np.zeros(3, dtype=np.int64), np.zeros((1, 3))])
def test_malformed_prompts_are_user_errors(bad):
    with pytest.raises(MinigptError):
        tiny_model().generate(bad, 3)


# ---------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens, block_size, stride", [(2, 4, 4), (9, 4, 4), (10, 4, 1), (30, 8, 3), (5, 8, 8)])
def test_sliding_windows_score_every_target_once(n_tokens, block_size, stride):
    from minigpt.perplexity import sliding_windows

    scored = []
    for begin, end, first_scored in sliding_windows(n_tokens, block_size, stride):
        assert 0 < end - begin <= block_size
        assert begin <= first_scored < end
        scored += range(first_scored + 1, end + 1)  # target positions
    assert scored == list(range(1, n_tokens))


def reference_perplexity(model, ids, stride):
    """Mean negative log-likelihood of every target, each from its own window."""
    from minigpt.perplexity import sliding_windows

    nll = []
    for begin, end, first_scored in sliding_windows(len(ids), model.config.block_size, stride):
        logits, _ = model.forward(ids[None, begin:end])
        logp = logits[0] - np.log(np.exp(logits[0]).sum(axis=-1, keepdims=True))
        for pos in range(first_scored, end):
            nll.append(-logp[pos - begin, ids[pos + 1]])
    return float(np.mean(nll))


@pytest.mark.parametrize("stride, batch_size", [(8, 1), (8, 3), (3, 2), (1, 4)])
def test_perplexity_matches_a_direct_computation(stride, batch_size):
    from minigpt.perplexity import perplexity

    model = tiny_model(block_size=8)
    ids = np.random.default_rng(4).integers(0, 13, size=27)
    loss, ppl, n = perplexity(model, ids, stride=stride, batch_size=batch_size, progress=False)
    assert n == 26
    assert loss == pytest.approx(reference_perplexity(model, ids, stride), rel=1e-12)
    assert ppl == pytest.approx(np.exp(loss))


def test_overlapping_windows_give_each_target_the_full_context():
    from minigpt.perplexity import perplexity

    model = tiny_model(block_size=8)
    ids = np.random.default_rng(5).integers(0, 13, size=20)
    loss, _, _ = perplexity(model, ids, stride=1, progress=False)
    logp = []
    for t in range(1, 20):
        logits = full_forward_logits(model, ids[None, max(0, t - 8) : t])[0]
        logp.append(logits[ids[t]] - np.log(np.exp(logits).sum()))
    assert loss == pytest.approx(-np.mean(logp), rel=1e-12)


@pytest.mark.parametrize("kwargs", [dict(stride=0), dict(stride=9), dict(batch_size=0)])
def test_bad_perplexity_settings_are_user_errors(kwargs):
    from minigpt.perplexity import perplexity

    with pytest.raises(MinigptError):
        perplexity(tiny_model(block_size=8), np.arange(10) % 13, progress=False, **kwargs)
    with pytest.raises(MinigptError):
        perplexity(tiny_model(block_size=8), np.array([1]), progress=False)
