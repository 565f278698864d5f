"""Sampling: turning a (B, V) row of logits into the next token of each row, on the host or where the logits are.

Sampling (`sample_next`) turns logits z into a distribution and draws from it:

    temperature t = 0   greedy: x = argmax_i z_i
    temperature t > 0   p_i = exp(z_i / t) / sum_j exp(z_j / t)
    top-k               keep exactly the k largest z_i (ties go to the lower token id)
    top-p (nucleus)     sort p descending and keep the smallest prefix whose mass reaches p
                        (a token is kept when the mass before it is still below p)
    min-p               keep the tokens with p_i >= min_p * max_j p_j

Filtered tokens get probability 0 and the rest are renormalised. Filters apply in
the order temperature, top-k, top-p, min-p, as in Hugging Face transformers. A logit of
-inf is a token that can never be drawn; NaN, +inf, or a row with no finite logit
describe no distribution, and are a MinigptError rather than an id outside the
vocabulary. The logits processors that come before (penalties, n-gram bans) are
minigpt.logits_processors.
"""

import numpy as np

from minigpt.backend import array_module, stable_argsort, to_host
from minigpt.errors import MinigptError
from minigpt.logits_processors import check_processor_args
# ---------------------------------------------------------------------------
# Samplers: plain functions of a (B, V) array of logits on the host.
# ---------------------------------------------------------------------------


def check_sampling_args(temperature=1.0, top_k=None, top_p=None, option=str, min_p=None):
    """Raise a MinigptError for sampling settings that mean nothing.

    `option` spells a parameter's name as the caller's user wrote it (a script passes `top_k` -> `--top-k`).
    """
    check_processor_args(min_p=min_p, option=option)
    if not np.isfinite(temperature) or temperature < 0:
        raise MinigptError(f"{option('temperature')} must be 0 (greedy) or positive, got {temperature}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise MinigptError(f"{option('top_k')} must be a whole number >= 1 (or left out), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise MinigptError(f"{option('top_p')} must be in (0, 1] (or left out), got {top_p}")


def check_logits(logits: np.ndarray, what: str = "logits") -> None:
    """A MinigptError unless every row of (B, V) logits describes a distribution.

    -inf is allowed (a token masked out) as long as each row keeps one finite
    logit; NaN and +inf are not: softmax would turn them into NaN probabilities,
    and the inverted cumulative sum in `draw` would then return the id V.
    """
    if np.isfinite(logits).all():  # the common case: one pass, no further work
        return
    nan_or_pos_inf = np.isnan(logits) | (logits == np.inf)
    if nan_or_pos_inf.any():
        row, token = map(int, np.argwhere(nan_or_pos_inf)[0])
        raise MinigptError(f"the {what} hold {logits[row, token]} (row {row}, token {token}): the model produced no "
                           f"distribution to sample from; check that its weights are finite")
    empty = ~np.isfinite(logits).any(axis=-1)
    if empty.any():
        raise MinigptError(f"row {int(np.argmax(empty))} of the {what} is all -inf: no token is left to sample")


def top_k_mask(logits, k: int):
    """(B, V) boolean, True for exactly k tokens per row: the k largest logits.

    Ties at the k-th value are broken in favour of lower token ids, so a row of
    equal logits keeps tokens 0..k-1. Linear time (a partition, not a sort).
    """
    xp = array_module(logits)  # NumPy or CuPy: the sampler runs where the logits are
    vocab_size = logits.shape[-1]
    if k >= vocab_size:
        return xp.ones(logits.shape, dtype=bool)
    kth_largest = xp.partition(logits, vocab_size - k, axis=-1)[:, vocab_size - k, None]
    above = logits > kth_largest
    ties = logits == kth_largest
    ties_needed = k - above.sum(axis=-1, keepdims=True)  # >= 1, by definition of the k-th value
    return above | (ties & (xp.cumsum(ties, axis=-1) <= ties_needed))


def top_p_mask(probs, p: float):
    """(B, V) boolean, True for the smallest set of most likely tokens whose mass reaches p.

    With probabilities sorted descending, p_(1) >= p_(2) >= ..., token (r) is kept
    when sum_{s<r} p_(s) < p: the set stops at the first token that brings the
    mass to p or beyond. The most likely token is always kept. Equal
    probabilities are ordered by token id (a stable sort), lower first.
    """
    xp = array_module(probs)  # NumPy or CuPy, as top_k_mask
    if p >= 1.0:
        return xp.ones(probs.shape, dtype=bool)  # no rounding in the sum may drop a token
    order = stable_argsort(-probs)  # (B, V), most likely first
    sorted_probs = xp.take_along_axis(probs, order, axis=-1)
    mass_before = xp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep = xp.empty(probs.shape, dtype=bool)
    keep[xp.arange(probs.shape[0])[:, None], order] = mass_before < p  # scattered back to token order
    return keep


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; -inf logits get probability exactly 0."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted)
    return probs / probs.sum(axis=-1, keepdims=True)


def min_p_mask(probs, min_p: float):
    """(B, V) boolean, True for the tokens whose probability is at least min_p times the row's largest (HF's MinP).

    Renormalising after top-p does not change the ratio to the largest, so the
    mask is the same on top-p's renormalised probabilities as on its scores.
    """
    return probs >= min_p * probs.max(axis=-1, keepdims=True)


def sampling_probs(logits, temperature=1.0, top_k=None, top_p=None, min_p=None) -> np.ndarray:
    """The (B, V) float64 distribution that `sample_next` draws from (temperature > 0).

    Warpers in Hugging Face's order: temperature, top-k, top-p, min-p.
    """
    with np.errstate(over="ignore"):  # a tiny temperature can overflow to inf, which the check reports
        scaled = np.asarray(logits, dtype=np.float64) / temperature
    check_logits(scaled, f"logits / temperature {temperature}")
    if top_k is not None:
        scaled = np.where(top_k_mask(scaled, int(top_k)), scaled, -np.inf)
    probs = softmax(scaled)
    if top_p is not None:
        probs = np.where(top_p_mask(probs, top_p), probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    if min_p is not None:
        probs = np.where(min_p_mask(probs, min_p), probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row from (B, V) probabilities, by inverting the cumulative sum.

    Token i is drawn when cdf_{i-1} <= u * cdf_V < cdf_i for u ~ U[0, 1), so a
    token of probability 0 (an empty interval) can never be drawn.
    """
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(probs.shape[0]) * cdf[:, -1]
    return np.array([np.searchsorted(row, x, side="right") for row, x in zip(cdf, u)], dtype=np.int64)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, rng=None, min_p=None) -> np.ndarray:
    """The next token id of each row of (B, V) logits, as a (B,) int64 NumPy array.

    temperature 0 is greedy (argmax, lowest id on ties; top_k/top_p change nothing);
    otherwise one draw from `sampling_probs`, using `rng` (a NumPy Generator).
    """
    check_sampling_args(temperature, top_k, top_p, min_p=min_p)
    logits = to_host(logits)
    check_logits(logits)
    if temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    if rng is None:
        rng = np.random.default_rng()
    return draw(sampling_probs(logits, temperature, top_k, top_p, min_p), rng)


# ---------------------------------------------------------------------------
# Sampling where the logits are (the GPU): only the B chosen ids come back.
# ---------------------------------------------------------------------------
#
# The same distribution and the same draw as `sample_next`, written against
# the logits' array module: the (B, V) row never leaves the device, the host
# sends B uniforms (drawn from the same NumPy Generator, so a seed gives the
# same tokens on either device up to float rounding in the probabilities) and
# gets B ids back: one device-to-host copy of 8 B bytes per token.


def probs_on_device(logits, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """`sampling_probs` computed where `logits` (B, V) are (temperature > 0): the (B, V) float64 distribution."""
    xp = array_module(logits)
    scaled = logits.astype(xp.float64) / temperature
    if top_k is not None:
        scaled = xp.where(top_k_mask(scaled, int(top_k)), scaled, -xp.inf)
    probs = xp.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None:
        probs = xp.where(top_p_mask(probs, top_p), probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)  # as sampling_probs, so the draws agree exactly
    if min_p is not None:
        probs = xp.where(min_p_mask(probs, min_p), probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def draw_on_device(probs, u):
    """One token per row of (B, V) probabilities for B uniforms u (on probs' device): `draw`'s inverted cdf."""
    cdf = array_module(probs).cumsum(probs, axis=-1)
    return (cdf <= u[:, None] * cdf[:, -1:]).sum(axis=-1)  # searchsorted(cdf, u * total, side="right"), as `draw`


def sample_next_on_device(logits, temperature=1.0, top_k=None, top_p=None, rng=None, min_p=None) -> np.ndarray:
    """`sample_next` computed where `logits` (B, V) are; returns (B,) int64 ids on the host.

    Rows with a NaN or +inf logit, or no finite one, come back as id -1 (one
    copy carries both the ids and that flag), which is then one clear error, as on the host.
    """
    check_sampling_args(temperature, top_k, top_p, min_p=min_p)
    xp = array_module(logits)
    finite_rows = ~(xp.isnan(logits) | (logits == xp.inf)).any(axis=-1) & (logits > -xp.inf).any(axis=-1)  # (B,)
    if temperature == 0:
        ids = xp.argmax(logits, axis=-1)
    else:
        if rng is None:
            rng = np.random.default_rng()
        probs = probs_on_device(logits, temperature, top_k, top_p, min_p)
        ids = draw_on_device(probs, xp.asarray(rng.random(logits.shape[0])))  # B uniforms to the device
    ids = to_host(xp.where(finite_rows, ids, -1)).astype(np.int64)  # the one copy: B ids
    if (ids < 0).any():
        raise MinigptError(f"the model produced non-finite logits (row {int(np.flatnonzero(ids < 0)[0])}): the "
                           f"weights are likely broken (NaN or inf); retrain or reload the checkpoint")
    return ids
