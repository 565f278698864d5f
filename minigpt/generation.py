"""Text generation: the decoding loop over the KV cache, prompts of different lengths, stop strings, streaming text.

A language model gives, for the last position of each sequence, a row of logits
z (one per vocabulary entry). Generating is repeating four steps:

    1. logits z = model(context)[:, -1, :]             (B, V)
    2. z = processors(z, context)                      repetition / frequency / presence penalties, n-gram bans
    3. next token x ~ sample(z)                        temperature, top-k, top-p, min-p (minigpt.sampling)
    4. context = context + [x]

Step 2 is minigpt.logits_processors, step 3 minigpt.sampling, both in Hugging
Face's order; speculative decoding (`prompt_lookup`, `draft_model`) is
minigpt.speculative, which this module's `generate_stream` hands B = 1 runs to.

The loop (`generate_stream`) never recomputes the prompt: it runs the prompt once
through the model filling a KV cache (prefill), then feeds one token per step,
whose keys and values are appended to the cache. A prompt longer than the
model's block_size is cut to its last block_size tokens.

Prompts of different lengths share one batch left-padded: row b's first pad[b]
cache slots hold padding, hidden from every real query by the attention mask,
and its tokens sit at positions slot - pad[b] (learned wpe or rotary alike), so
each row computes what it would alone (to rounding).

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
(rotary too). In a ragged batch each row's window moves when that row fills
block_size, as it would alone: the rows that move are cut, and the whole batch
is refilled (left-padded again) in one pass. On the GPU the cache never leaves
the device: a shift re-runs the kept ids, sent once per shift.
"""

import codecs

import numpy as np

from minigpt import speculative
from minigpt.backend import to_host
from minigpt.errors import MinigptError
from minigpt.logits_processors import LogitsProcessors, check_processor_args
from minigpt.model_config import check_token_range
from minigpt.sampling import (  # noqa: F401 (the samplers' old home: callers import them from here too)
    check_logits,
    check_sampling_args,
    draw,
    min_p_mask,
    sample_next,
    sample_next_on_device,
    sampling_probs,
    softmax,
    top_k_mask,
    top_p_mask,
)

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


def _check_prompts(idx, vocab_size: int) -> list:
    """The prompts as a list of B 1-D int64 arrays: from a (B, T) array, or a list of id sequences of any lengths.

    Every id must lie in [0, vocab_size): NumPy would wrap -1 round to the last token, CuPy read past the table."""
    if isinstance(idx, (list, tuple)) and len(idx) and not np.isscalar(idx[0]):
        rows = [to_host(row) for row in idx]  # lists, NumPy or CuPy arrays
        for i, row in enumerate(rows):
            if row.ndim != 1 or len(row) == 0 or not np.issubdtype(row.dtype, np.integer):
                raise MinigptError(f"prompt {i} must be a non-empty sequence of integer token ids, got shape "
                                   f"{row.shape} of {row.dtype}")
            check_token_range(row, vocab_size)
        return [row.astype(np.int64) for row in rows]
    prompt = _check_prompt(idx)
    check_token_range(prompt, vocab_size)
    return list(prompt)


def left_pad(rows, pad_id=0):
    """(B, L) ids, each row right-aligned after pad_id, and the (B,) padding lengths; L = the longest row."""
    length = max(len(r) for r in rows)
    pad = np.array([length - len(r) for r in rows], dtype=np.int64)
    out = np.full((len(rows), length), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, pad[i]:] = r
    return out, pad


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
    """The logits of B growing contexts, from a KV cache that slides past block_size (see the module's doc).

    `rows` holds each row's ids that the cache holds (host, no padding): the
    logits are always those of a full forward over each row alone (to rounding).
    `window` is the same as a left-padded (B, L) array.
    """

    def __init__(self, model, prompt, window_shift=None):
        block_size = model.config.block_size
        check_window_shift(window_shift, block_size)
        self.model, self.block_size = model, block_size
        self.shift = max(1, block_size // 2) if window_shift is None else int(window_shift)
        self.cache = model.new_kv_cache()
        self.rows = [[int(i) for i in row[-block_size:]] for row in prompt]  # lists: an append is O(1)
        self.logits = self._refill()  # prefill

    @property
    def window(self):
        return left_pad(self.rows)[0]

    def push(self, next_ids):
        """Append (B,) ids to every sequence; returns the (B, V) logits of the position after them."""
        # the cache holds max_b len(row b) positions: it is full exactly when some row fills block_size
        full = [len(row) == self.block_size for row in self.rows] if self.cache.length == self.block_size else None
        for row, i in zip(self.rows, next_ids):
            row.append(int(i))
        if full is None:
            self.logits = self._feed(np.asarray(next_ids, dtype=np.int64)[:, None])
        else:  # move the full rows' windows and recompute what every row keeps, in one left-padded pass
            keep = self.block_size - self.shift + 1
            self.rows = [row[-keep:] if row_full else row for row, row_full in zip(self.rows, full)]
            self.logits = self._refill()
        return self.logits

    def _refill(self):
        window, pad = left_pad(self.rows)
        self.cache.reset(pad)
        return self._feed(window)

    def _feed(self, ids):
        """Logits (B, V) of the last position after feeding ids (B, T) to the cache."""
        model = self.model
        return model.forward_cached(model.xp.asarray(ids), self.cache, last_only=True)[:, -1, :]


class StopStrings:
    """Which of B sequences have produced one of the `stop` strings, from their ids as they come.

    A sequence stops when the decoded text of its generated tokens contains a
    stop string, which may span several tokens. The check runs on the host
    from the ids (on a GPU, the B ids that come back anyway). `cut(text)` is
    the text before the first stop string: what the scripts print.
    """

    def __init__(self, stop, tokenizer, batch_size):
        self.stops = check_stop(stop)
        if tokenizer is None:
            raise MinigptError("stop strings need the tokenizer (pass tokenizer=...) to decode the ids")
        self.decoders = [StreamDecoder(tokenizer) for _ in range(batch_size)]
        self.texts = [""] * batch_size
        self.longest = max(len(s) for s in self.stops)
        self.stopped = np.zeros(batch_size, dtype=bool)

    def push(self, ids) -> np.ndarray:
        """Feed each row's new id; returns the (B,) rows that have now stopped (sticky)."""
        for b, i in enumerate(ids):
            if self.stopped[b]:
                continue
            new = self.decoders[b].push([int(i)])
            self.texts[b] += new
            tail = self.texts[b][-(self.longest + len(new)):]  # a stop string completed now ends in the new text
            self.stopped[b] = any(s in tail for s in self.stops)
        return self.stopped

    def cut(self, text):
        """The text before the first stop string (all of it when there is none)."""
        i = find_stop(text, self.stops)
        return text if i is None else text[:i]


def find_stop(text, stops, start=0):
    """Index of the first of the `stops` strings in text[start:] (as an index into text), or None."""
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def check_stop(stop, option=str):
    """The stop strings as a list: `stop` is one string or a list of them, none empty."""
    stops = [stop] if isinstance(stop, str) else list(stop)
    if not stops or any(not isinstance(s, str) or not s for s in stops):
        raise MinigptError(f"{option('stop')} must be one non-empty string or a list of them, got {stop!r}")
    return stops


def generate_stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, stop_token=None,
                    window_shift=None, *, min_p=None, repetition_penalty=None, frequency_penalty=0.0,
                    presence_penalty=0.0, no_repeat_ngram_size=None, stop=None, tokenizer=None, prompt_lookup=None,
                    draft_model=None):
    """Yield the next token of every sequence, a (B,) int64 NumPy array per step.

    `idx` is the (B, T) prompt (any backend), or a list of B prompts of
    different lengths (lists or 1-D arrays of ids: left-padded, each row
    generating what it would alone). `seed` is an int, None (fresh entropy) or a
    NumPy Generator (to continue one stream of randomness across calls). A
    sequence that has produced `stop_token`, or whose generated text contains a
    `stop` string (one or a list; needs `tokenizer`), is finished: from then on
    its entries are `stop_token` again (padding; the tokenizer's end-of-text
    token, else 0, when only `stop` is given), and the stream ends early once
    every sequence is finished. `window_shift` is how far the context window
    moves once the cache is full: 1 (exact, slow) .. block_size, None for
    block_size // 2 (see the module's doc).

    Steering (Hugging Face's names; minigpt.logits_processors): repetition_penalty,
    frequency_penalty, presence_penalty, no_repeat_ngram_size, then min_p after
    temperature, top_k, top_p. Speculative decoding (minigpt.speculative; B = 1):
    `prompt_lookup` K drafts up to K tokens from the context, `draft_model` (a
    GPT with the same vocabulary) drafts with a smaller model; the tokens are
    those plain decoding gives (greedy: the same; sampling: the same distribution).
    """
    check_sampling_args(temperature, top_k, top_p, min_p=min_p)
    check_processor_args(repetition_penalty, frequency_penalty, presence_penalty, no_repeat_ngram_size)
    check_window_shift(window_shift, model.config.block_size)
    if max_new_tokens < 0:
        raise MinigptError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    prompts = _check_prompts(idx, model.config.vocab_size)
    B = len(prompts)
    rng = _as_rng(seed)
    processors = LogitsProcessors(prompts, model.config.vocab_size, model.xp, repetition_penalty, frequency_penalty,
                                  presence_penalty, no_repeat_ngram_size)
    stops = None if stop is None else StopStrings(stop, tokenizer, B)
    pad_id = _pad_id(stop_token, tokenizer)
    finished = np.zeros(B, dtype=bool)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    if prompt_lookup is not None or draft_model is not None:
        if B != 1:
            raise MinigptError(f"speculative decoding (prompt_lookup, draft_model) runs one sequence at a time, got "
                               f"{B}: generate each prompt on its own")
        steps = speculative.speculative_steps(model, prompts[0], processors, sampling, rng, window_shift,
                                              prompt_lookup=prompt_lookup, draft_model=draft_model)
    else:
        steps = _plain_steps(model, prompts, processors, sampling, rng, window_shift)

    was_training = getattr(model, "training", False)
    model.eval()
    try:
        for step in range(max_new_tokens):
            next_ids = next(steps)
            next_ids[finished] = pad_id
            if stop_token is not None:
                finished |= next_ids == stop_token
            if stops is not None:
                finished |= stops.push(next_ids)
            yield next_ids
            if finished.all():
                return
    finally:
        steps.close()
        if was_training:
            model.train()


def _pad_id(stop_token, tokenizer):
    """What fills a finished row, and a short prompt's left: stop_token, else the end-of-text token, else 0."""
    if stop_token is not None:
        return stop_token
    eot = getattr(tokenizer, "eot_token", None)
    return 0 if eot is None else eot


def _plain_steps(model, prompts, processors, sampling, rng, window_shift):
    """The plain decoding loop, as a generator of (B,) ids (the prefill runs at the first `next`)."""
    # on the GPU the logits stay there and only the B ids come back (sample_next_on_device)
    sample = sample_next if model.xp is np else sample_next_on_device
    window = SlidingWindow(model, prompts, window_shift)
    while True:
        next_ids = sample(processors(window.logits), rng=rng, **sampling)
        processors.append(next_ids)
        yield next_ids
        window.push(next_ids)


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, stop_token=None,
             window_shift=None, **controls):
    """The prompt followed by up to `max_new_tokens` new tokens: (B, T + n) ids.

    Same array module as the model (NumPy or CuPy). As with Hugging Face's
    `generate`, `stop_token` is kept in the output, a finished sequence is padded
    with `stop_token` (GPT-2's pad token is its end-of-text token), and the
    result is shorter than T + max_new_tokens (n < max_new_tokens) only when
    every sequence stopped early. The tokens that complete a `stop` string are
    kept too (decode and `StopStrings.cut` to drop the string from the text).
    Prompts of different lengths (a list) come back left-padded with the pad
    id (`stop_token`, else the tokenizer's end-of-text token, else 0).
    `window_shift` and the steering `controls` (min_p, repetition_penalty,
    frequency_penalty, presence_penalty, no_repeat_ngram_size, stop, tokenizer,
    prompt_lookup, draft_model): see `generate_stream`.
    """
    prompts = _check_prompts(idx, model.config.vocab_size)
    steps = list(generate_stream(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop_token,
                                 window_shift, **controls))
    prompt, _ = left_pad(prompts, _pad_id(stop_token, controls.get("tokenizer")))
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
