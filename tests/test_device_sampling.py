"""Sampling where the logits are: generation.sample_next_on_device against the host sampler, and its one copy.

sample_next_on_device is written against the logits' array module, so on NumPy
it must give exactly sample_next's ids for the same seed (same distribution,
same uniforms, same inversion); under the strict CuPy stand-in it must copy
back only the B ids.
"""

import numpy as np
import pytest

from minigpt.errors import MinigptError
from minigpt.generation import sample_next, sample_next_on_device, sampling_probs
from tests import device_standin

SETTINGS = [  # (temperature, top_k, top_p)
    (0.0, None, None), (1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (0.9, 3, 0.5), (1.0, 1, None),
    (1.0, None, 1.0), (1.0, 100, None),
]


def logits_with_ties(seed, B=4, V=50):
    """Integer-valued logits: many exact ties, where the ties rules show."""
    return np.random.default_rng(seed).integers(-3, 4, (B, V)).astype(np.float32)


@pytest.mark.parametrize("temperature, top_k, top_p", SETTINGS)
def test_the_device_sampler_on_numpy_draws_what_the_host_sampler_draws(temperature, top_k, top_p):
    for seed in range(20):
        logits = logits_with_ties(seed) if seed % 2 else np.random.default_rng(seed).standard_normal((4, 50))
        host = sample_next(logits, temperature, top_k, top_p, rng=np.random.default_rng(seed))
        ours = sample_next_on_device(logits, temperature, top_k, top_p, rng=np.random.default_rng(seed))
        assert ours.dtype == np.int64 and ours.shape == (4,)
        np.testing.assert_array_equal(ours, host)


def test_the_draws_follow_the_sampling_distribution():
    """Many draws of one row: the frequencies match sampling_probs (top-k and top-p applied)."""
    logits = np.random.default_rng(3).standard_normal((1, 12))
    probs = sampling_probs(logits, 0.8, 6, 0.9)[0]
    rng = np.random.default_rng(4)
    counts = np.bincount([sample_next_on_device(logits, 0.8, 6, 0.9, rng)[0] for _ in range(4000)], minlength=12)
    assert np.all(counts[probs == 0] == 0)
    np.testing.assert_allclose(counts / 4000, probs, atol=0.03)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the NumPy run of the device code meets the NaN
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_non_finite_logits_are_one_clear_error(bad, temperature):
    logits = np.zeros((3, 5))
    logits[2, 1] = bad
    with pytest.raises(MinigptError, match=r"non-finite logits \(row 2\)"):
        sample_next_on_device(logits, temperature, rng=np.random.default_rng(0))


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.0, None, None), (0.9, 3, 0.5)])
def test_only_the_b_ids_come_back_to_the_host(temperature, top_k, top_p):
    B, V = 3, 1000
    with device_standin.installed() as cupy:
        logits = cupy.asarray(np.random.default_rng(5).standard_normal((B, V)).astype(np.float32))
        device_standin.TRANSFERS.clear()
        ids = sample_next_on_device(logits, temperature, top_k, top_p, rng=np.random.default_rng(6))
        transfers = list(device_standin.TRANSFERS)
    assert isinstance(ids, np.ndarray) and ids.shape == (B,)
    assert [t for t in transfers if t[0] == "d2h"] == [("d2h", B * 8)]  # B int64 ids, nothing else
    assert sum(n for d, n in transfers if d == "h2d") <= B * 8  # at most the B uniforms go out


def test_generation_samples_on_the_device_when_the_model_is_there(monkeypatch):
    """generate_stream hands a GPU model's logits to sample_next_on_device (only B ids come back per token)."""
    import types

    import minigpt.generation as generation
    from minigpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=16, vocab_size=11), seed=0)
    calls = []

    def spy(logits, *args, **kwargs):
        calls.append(logits.shape)
        return sample_next(logits, *args, **kwargs)

    monkeypatch.setattr(generation, "sample_next_on_device", spy)
    model.xp = types.SimpleNamespace(asarray=np.asarray, empty=np.empty)  # not numpy itself: the device path
    steps = list(generation.generate_stream(model, np.array([[1, 2]]), 3, temperature=1.0, seed=0))
    assert len(steps) == 3 and calls == [(1, 11)] * 3
