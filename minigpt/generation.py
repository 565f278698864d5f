"""Text generation: the samplers, the decoding loop over the KV cache, streaming text.

A language model gives, for the last position of each sequence, a row of logits
z (one per vocabulary entry). Generating is repeating three steps:

    1. logits z = model(context)[:, -1, :]             (B, V)
    2. next token x ~ sample(z)                        (B,)
    3. context = context + [x]

Sampling (`sample_next`) turns z into a distribution and draws from it:

    temperature t = 0   greedy: x = argmax_i z_i
    temperature t > 0   p_i = exp(z_i / t) / sum_j exp(z_j / t)
    top-k               keep exactly the k largest z_i (ties go to the lower token id)
    top-p (nucleus)     sort p descending and keep the smallest prefix whose mass reaches p
                        (a token is kept when the mass before it is still below p)

Filtered tokens get probability 0 and the rest are renormalised. Filters apply in
the order temperature, top-k, top-p, as in Hugging Face transformers. A logit of
-inf is a token that can never be drawn; NaN, +inf, or a row with no finite logit
describe no distribution, and are a MinigptError rather than an id outside the
vocabulary.

The loop (`generate_stream`) never recomputes the prompt: it runs the prompt once
through the model filling a KV cache (prefill), then feeds one token per step,
whose keys and values are appended to the cache. A prompt longer than the
model's block_size is cut to its last block_size tokens.

Past block_size the window slides (`SlidingWindow`), by s = `window_shift`
tokens at a time. Cached keys and values cannot follow the window: a token's
keys in every layer after the first were computed from states that attended to
the tokens now dropped, and with learned positions (GPT-2's wpe) each one also
holds the embedding of its position. So when the cache is full, it is reset
(its buffers kept) and refilled by one pass over the last block_size - s + 1
tokens, the newest included, at positions 0 ..; the s - 1 tokens after it are
single-token steps again. Every s tokens thus cost block_size token positions
(one (block_size - s + 1)-token pass and s - 1 steps): block_size / s per token,
against block_size per token for a window re-run at every token. Right after a
shift the logits are exactly those of a full forward over the kept tokens; in
between, a token sees every token since the window last moved (block_size - s + 1
up to block_size of them). s = 1 is the exact sliding window, each token seeing
what a full forward over `context[:, -block_size:]` sees, at a block_size-token
pass per token; the default s = block_size // 2 is the cheap one that still
keeps at least half a window. The same holds for every position variant
(rotary too). On the GPU the cache never leaves the device: a shift re-runs
the kept ids, sent once per shift.
"""

import codecs

import numpy as np

from minigpt.backend import array_module, stable_argsort, to_host
from minigpt.errors import MinigptError

# ---------------------------------------------------------------------------
# Samplers: plain functions of a (B, V) array of logits on the host.
# ---------------------------------------------------------------------------


def check_sampling_args(temperature=1.0, top_k=None, top_p=None, option=str):
    """Raise a MinigptError for sampling settings that mean nothing.

    `option` spells a parameter's name as the caller's user wrote it (a script passes `top_k` -> `--top-k`).
    """
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


def sampling_probs(logits, temperature=1.0, top_k=None, top_p=None) -> np.ndarray:
    """The (B, V) float64 distribution that `sample_next` draws from (temperature > 0)."""
    with np.errstate(over="ignore"):  # a tiny temperature can overflow to inf, which the check reports
        scaled = np.asarray(logits, dtype=np.float64) / temperature
    check_logits(scaled, f"logits / temperature {temperature}")
    if top_k is not None:
        scaled = np.where(top_k_mask(scaled, int(top_k)), scaled, -np.inf)
    probs = softmax(scaled)
    if top_p is not None:
        probs = np.where(top_p_mask(probs, top_p), probs, 0.0)
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


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, rng=None) -> np.ndarray:
    """The next token id of each row of (B, V) logits, as a (B,) int64 NumPy array.

    temperature 0 is greedy (argmax, lowest id on ties; top_k/top_p change nothing);
    otherwise one draw from `sampling_probs`, using `rng` (a NumPy Generator).
    """
    check_sampling_args(temperature, top_k, top_p)
    logits = to_host(logits)
    check_logits(logits)
    if temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    if rng is None:
        rng = np.random.default_rng()
    return draw(sampling_probs(logits, temperature, top_k, top_p), rng)


# ---------------------------------------------------------------------------
# The decoding loop.
# ---------------------------------------------------------------------------


def _as_rng(seed):
    """A NumPy Generator from a seed (int or None), or `seed` itself if it already is one."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _check_prompt(idx) -> np.ndarray:
    """The prompt as a (B, T) int64 NumPy array, T >= 1."""
    idx = to_host(idx)
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise MinigptError(f"the prompt must be a (batch, length) array of token ids with length >= 1, got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise MinigptError(f"the prompt must hold integer token ids, got dtype {idx.dtype}")
    return idx.astype(np.int64)


def check_window_shift(window_shift, block_size=None, option=str):
    """Raise a MinigptError unless `window_shift` is None (the default) or a whole number in 1 .. block_size.

    With block_size None (no model loaded yet) only the lower bound is checked.
    """
    if window_shift is None:
        return
    if int(window_shift) != window_shift or window_shift < 1:
        raise MinigptError(f"{option('window_shift')} must be a whole number >= 1 (or left out), got {window_shift}")
    if block_size is not None and window_shift > block_size:
        raise MinigptError(f"{option('window_shift')} must be at most the model's block_size {block_size}, "
                           f"got {window_shift}")


class SlidingWindow:
    """The logits of a growing context, from a KV cache that slides past block_size (see the module's doc).

    `window` holds the ids the cache holds, (B, cache.length) on the host: the
    logits are always those of a full forward over `window` (up to rounding).
    """

    def __init__(self, model, prompt, window_shift=None):
        block_size = model.config.block_size
        check_window_shift(window_shift, block_size)
        self.model, self.block_size = model, block_size
        self.shift = max(1, block_size // 2) if window_shift is None else int(window_shift)
        self.cache = model.new_kv_cache()
        self.window = prompt[:, -block_size:]
        self.logits = self._feed(self.window)  # prefill

    def push(self, next_ids):
        """Append (B,) ids to every sequence; returns the (B, V) logits of the position after them."""
        self.window = np.concatenate([self.window, next_ids[:, None]], axis=1)
        if self.cache.length < self.block_size:
            self.logits = self._feed(self.window[:, -1:])
        else:  # full: move the window by `shift` and recompute what it keeps
            self.window = self.window[:, -(self.block_size - self.shift + 1):]
            self.cache.reset()
            self.logits = self._feed(self.window)
        return self.logits

    def _feed(self, ids):
        """Logits (B, V) of the last position after feeding ids (B, T) to the cache."""
        model = self.model
        return model.forward_cached(model.xp.asarray(ids), self.cache, last_only=True)[:, -1, :]


def generate_stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, stop_token=None,
                    window_shift=None):
    """Yield the next token of every sequence, a (B,) int64 NumPy array per step.

    `idx` is the (B, T) prompt (any backend). `seed` is an int, None (fresh
    entropy) or a NumPy Generator (to continue one stream of randomness across
    calls). A sequence that has produced `stop_token` is finished: from then on
    its entries are `stop_token` again (padding), and the stream ends early once
    every sequence is finished. `window_shift` is how far the context window
    moves once the cache is full: 1 (exact, slow) .. block_size, None for
    block_size // 2 (see the module's doc).
    """
    check_sampling_args(temperature, top_k, top_p)
    check_window_shift(window_shift, model.config.block_size)
    if max_new_tokens < 0:
        raise MinigptError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    context = _check_prompt(idx)
    rng = _as_rng(seed)
    finished = np.zeros(context.shape[0], dtype=bool)

    # on the GPU the logits stay there and only the B ids come back (sample_next_on_device)
    sample = sample_next if model.xp is np else sample_next_on_device
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        window = SlidingWindow(model, context, window_shift)
        for step in range(max_new_tokens):
            next_ids = sample(window.logits, temperature, top_k, top_p, rng)
            if stop_token is not None:
                next_ids[finished] = stop_token
                finished |= next_ids == stop_token
            yield next_ids
            if finished.all() or step == max_new_tokens - 1:
                return
            window.push(next_ids)
    finally:
        if was_training:
            model.train()


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, stop_token=None,
             window_shift=None):
    """The prompt followed by up to `max_new_tokens` new tokens: (B, T + n) ids.

    Same array module as the model (NumPy or CuPy). As with Hugging Face's
    `generate`, `stop_token` is kept in the output, a finished sequence is padded
    with `stop_token` (GPT-2's pad token is its end-of-text token), and the
    result is shorter than T + max_new_tokens (n < max_new_tokens) only when
    every sequence stopped early. `window_shift`: see `generate_stream`.
    """
    prompt = _check_prompt(idx)
    steps = list(generate_stream(model, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop_token,
                                 window_shift))
    out = np.concatenate([prompt] + [ids[:, None] for ids in steps], axis=1)
    return model.xp.asarray(out)


# ---------------------------------------------------------------------------
# Streaming text.
# ---------------------------------------------------------------------------


class StreamDecoder:
    """Turns token ids, fed one step at a time, into text that is safe to print.

    A byte-level BPE token may end in the middle of a multi-byte UTF-8 character
    ("é" can be split over two tokens). The decoder keeps such a partial
    character until the token that completes it arrives, so the printed text
    never shows a replacement character that the full decode would not.

    With a tokenizer that has `decode_bytes(ids)`, bytes go through an
    incremental UTF-8 decoder. Otherwise the whole sequence so far is decoded at
    every step and the new text is released up to any trailing U+FFFD.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids = []
        self.emitted = 0  # characters already returned, for the decode-everything fallback
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids) -> str:
        """The text that the new `ids` complete (possibly "")."""
        ids = [int(i) for i in np.atleast_1d(ids)]
        if hasattr(self.tokenizer, "decode_bytes"):
            return self._utf8.decode(self.tokenizer.decode_bytes(ids))
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids).rstrip("\ufffd")  # a trailing U+FFFD may be a partial character
        if len(text) <= self.emitted:
            return ""
        new, self.emitted = text[self.emitted :], len(text)
        return new

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character becomes U+FFFD)."""
        if hasattr(self.tokenizer, "decode_bytes"):
            return self._utf8.decode(b"", final=True)
        text = self.tokenizer.decode(self.ids)
        new, self.emitted = text[self.emitted :], len(text)
        return new


# ---------------------------------------------------------------------------
# Turning a prompt into ids.
# ---------------------------------------------------------------------------


def encode_prompt(tokenizer, text: str, block_size: int, note=print):
    """The prompt's token ids, at most block_size of them, saying (via `note`) what was changed.

    An empty prompt starts from `<|endoftext|>` (BPE) or a newline (characters),
    as GPT-2 and nanoGPT do. "<|endoftext|>" written in a prompt is the special
    token. A prompt longer than the context keeps its last block_size tokens.
    """
    if not text:
        if tokenizer.eot_token is not None:
            note("empty prompt: starting from <|endoftext|>")
            return [tokenizer.eot_token]
        note("empty prompt: starting from a newline")
        text = "\n"
    ids = tokenizer.encode(text, allowed_special="all") if tokenizer.eot_token is not None else tokenizer.encode(text)
    if len(ids) > block_size:
        note(f"the prompt is {len(ids)} tokens, longer than the model's context of {block_size}: keeping its last {block_size}")
        ids = ids[-block_size:]
    return ids


# ---------------------------------------------------------------------------
# Sampling where the logits are (the GPU): only the B chosen ids come back.
# ---------------------------------------------------------------------------
#
# The same distribution and the same draw as `sample_next`, written against
# the logits' array module: the (B, V) row never leaves the device, the host
# sends B uniforms (drawn from the same NumPy Generator, so a seed gives the
# same tokens on either device up to float rounding in the probabilities) and
# gets B ids back: one device-to-host copy of 8 B bytes per token.


def sample_next_on_device(logits, temperature=1.0, top_k=None, top_p=None, rng=None) -> np.ndarray:
    """`sample_next` computed where `logits` (B, V) are; returns (B,) int64 ids on the host.

    Rows with a non-finite logit come back as id -1 (one copy carries both the
    ids and that flag), which is then one clear error, as on the host.
    """
    check_sampling_args(temperature, top_k, top_p)
    xp = array_module(logits)
    finite_rows = xp.isfinite(logits).all(axis=-1)  # (B,)
    if temperature == 0:
        ids = xp.argmax(logits, axis=-1)
    else:
        if rng is None:
            rng = np.random.default_rng()
        scaled = logits.astype(xp.float64) / temperature
        if top_k is not None:
            scaled = xp.where(top_k_mask(scaled, int(top_k)), scaled, -xp.inf)
        probs = xp.exp(scaled - scaled.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        if top_p is not None:
            probs = xp.where(top_p_mask(probs, top_p), probs, 0.0)
            probs /= probs.sum(axis=-1, keepdims=True)  # as sampling_probs, so the draws agree exactly
        cdf = xp.cumsum(probs, axis=-1)
        u = xp.asarray(rng.random(logits.shape[0]))[:, None] * cdf[:, -1:]  # B uniforms to the device
        ids = (cdf <= u).sum(axis=-1)  # searchsorted(cdf, u, side="right"), as `draw`
    ids = to_host(xp.where(finite_rows, ids, -1)).astype(np.int64)  # the one copy: B ids
    if (ids < 0).any():
        raise MinigptError(f"the model produced non-finite logits (row {int(np.flatnonzero(ids < 0)[0])}): the "
                           f"weights are likely broken (NaN or inf); retrain or reload the checkpoint")
    return ids
