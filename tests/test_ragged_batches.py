"""Prompts of different lengths in one batch: left-padded, masked, each row at its own positions."""

import numpy as np
import pytest

from minigpt.generation import SlidingWindow, generate, generate_stream, left_pad
from minigpt.model import GPT, GPTConfig

SWITCHES = {"learned": {}, "rotary": dict(position="rotary", norm="rmsnorm", activation="swiglu", n_kv_head=1)}


def model_of(position, block_size=16, vocab_size=13, seed=0):
    return GPT(GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=16, block_size=block_size, vocab_size=vocab_size),
                            **SWITCHES[position]}), dtype="float64", seed=seed)


def prompts_of(lengths, vocab_size=13, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, n) for n in lengths]


@pytest.mark.parametrize("position", SWITCHES)
def test_prefill_logits_of_each_row_equal_the_row_alone(position):
    model = model_of(position)
    prompts = prompts_of([3, 11, 1, 16, 7])
    window = SlidingWindow(model, prompts)
    assert window.cache.pad.tolist() == [13, 5, 15, 0, 9]
    for b, p in enumerate(prompts):
        alone = model.forward(p[None])[0][0, -1]
        np.testing.assert_allclose(window.logits[b], alone, rtol=0, atol=1e-10)


@pytest.mark.parametrize("position", SWITCHES)
@pytest.mark.parametrize("window_shift", [None, 1, 5])
def test_ragged_greedy_equals_one_at_a_time_past_block_size(position, window_shift):
    """40 tokens past a context of 16: each row's window slides when that row fills it, as it would alone."""
    model = model_of(position)
    prompts = prompts_of([2, 9, 16, 5])
    batch = generate(model, prompts, 40, temperature=0, window_shift=window_shift)
    for b, p in enumerate(prompts):
        alone = generate(model, p[None], 40, temperature=0, window_shift=window_shift)
        assert batch[b, -40:].tolist() == alone[0, -40:].tolist()
        assert batch[b, -40 - len(p):-40].tolist() == p.tolist()


@pytest.mark.parametrize("position", SWITCHES)
def test_ragged_logits_agree_with_one_at_a_time_at_every_step(position):
    model = model_of(position)
    prompts = prompts_of([4, 12, 1])
    batch = SlidingWindow(model, prompts, window_shift=3)
    alone = [SlidingWindow(model, [p], window_shift=3) for p in prompts]
    rng = np.random.default_rng(1)
    for _ in range(30):  # past block_size: every row's window moves, at different steps
        for b, w in enumerate(alone):
            np.testing.assert_allclose(batch.logits[b], w.logits[0], rtol=0, atol=1e-10)
        ids = rng.integers(0, 13, len(prompts))
        batch.push(ids)
        for b, w in enumerate(alone):
            w.push(ids[b:b + 1])
            assert batch.rows[b] == w.rows[0]


def test_ragged_sampling_path_with_top_k_1_is_each_rows_greedy():
    """The sampling path (temperature > 0) on a ragged batch: top_k = 1 leaves each row its own argmax."""
    model = model_of("learned")
    p = prompts_of([6])[0]
    out = generate(model, [p, p[2:], p[:1]], 20, temperature=1.0, top_k=1, seed=4)
    assert out.shape == (3, 26)
    assert out[1, 2:6].tolist() == p[2:].tolist() and out[1, :2].tolist() == [0, 0]  # padding left, then the prompt
    for b, q in enumerate([p, p[2:], p[:1]]):
        assert out[b, -20:].tolist() == generate(model, q[None], 20, temperature=0)[0, -20:].tolist()


def test_left_pad():
    ids, pad = left_pad([np.array([1, 2, 3]), np.array([4])], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and pad.tolist() == [0, 2]


def test_stream_of_a_ragged_batch_yields_b_ids_per_step():
    model = model_of("rotary")
    steps = list(generate_stream(model, prompts_of([3, 8]), 5, temperature=0))
    assert len(steps) == 5 and all(s.shape == (2,) for s in steps)
