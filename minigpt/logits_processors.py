"""Logits processors: the steering controls of generation, in Hugging Face's order and under its names.

Before a token is sampled its row of logits z (one per vocabulary entry) goes
through these, in this order (transformers' `_get_logits_processor`, with
OpenAI's two penalties, which transformers lacks, right after its own):

    repetition_penalty r   (HF)     z_j = z_j / r if z_j > 0 else z_j * r, for every token j in the sequence so far
                                    (prompt included)
    frequency_penalty f,   (OpenAI) z_j -= f * c_j + q * [c_j > 0], c_j = how often j was generated so far
    presence_penalty q
    no_repeat_ngram_size n (HF)     z_j = -inf for every j that would complete an n-gram already in the sequence

then the sampling warpers of minigpt.generation.sampling_probs: temperature,
top-k, top-p, min-p. Greedy decoding (temperature 0) runs the processors and
takes the argmax.

The processors are written against the logits' array module (NumPy or CuPy):
on a GPU the (B, V) rows never leave the device. The token counts live there
too, updated from the B ids the host sends each step; the n-gram ban is worked
out on the host from the ids it already has (it needs the history, not the
logits) and sent as a short list of (row, token) pairs.
"""

import numpy as np

from minigpt.backend import array_module
from minigpt.errors import MinigptError

PROCESSOR_NAMES = ("repetition_penalty", "frequency_penalty", "presence_penalty", "no_repeat_ngram_size")


def check_processor_args(repetition_penalty=None, frequency_penalty=0.0, presence_penalty=0.0,
                         no_repeat_ngram_size=None, min_p=None, option=str):
    """Raise a MinigptError for settings that mean nothing (`option` spells a name as the user wrote it)."""
    if repetition_penalty is not None and not (np.isfinite(repetition_penalty) and repetition_penalty > 0):
        raise MinigptError(f"{option('repetition_penalty')} must be a positive number (1 changes nothing; "
                           f"> 1 penalises repeats), got {repetition_penalty}")
    for name, value in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
        if not np.isfinite(value) or not -2.0 <= value <= 2.0:
            raise MinigptError(f"{option(name)} must be between -2 and 2 (OpenAI's range; 0 is off), got {value}")
    if no_repeat_ngram_size is not None and (int(no_repeat_ngram_size) != no_repeat_ngram_size
                                             or no_repeat_ngram_size < 1):
        raise MinigptError(f"{option('no_repeat_ngram_size')} must be a whole number >= 1 (or left out), "
                           f"got {no_repeat_ngram_size}")
    if min_p is not None and not (np.isfinite(min_p) and 0 <= min_p <= 1):
        raise MinigptError(f"{option('min_p')} must be in [0, 1] (or left out), got {min_p}")


# -- the rules, as functions of a (B, V) row of logits ---------------------------------


def repetition_penalty(logits, seen, penalty):
    """HF's RepetitionPenaltyLogitsProcessor: seen tokens' logits divided by `penalty` if > 0, else multiplied.

    seen: (B, V) boolean, True for every token present in the row's sequence.
    """
    xp = array_module(logits)
    return xp.where(seen, xp.where(logits > 0, logits / penalty, logits * penalty), logits)


def frequency_presence_penalty(logits, counts, frequency_penalty, presence_penalty):
    """OpenAI's rule: z_j - f * c_j - q * [c_j > 0], counts c (B, V) of the generated tokens."""
    return logits - frequency_penalty * counts - presence_penalty * (counts > 0)


def banned_ngram_tokens(history, n):
    """The tokens that would complete an n-gram already in `history` (1-D ids): HF's no_repeat_ngram rule.

    With h the history and g = its last n - 1 ids, every i with h[i : i + n - 1] = g
    (an earlier occurrence of g) bans h[i + n - 1]. Empty while len(h) < n - 1 + 1.
    """
    h = np.asarray(history, dtype=np.int64)
    if n == 1:
        return np.unique(h)  # every 1-gram: each token seen so far
    if len(h) < n:
        return np.empty(0, dtype=np.int64)
    prefixes = np.lib.stride_tricks.sliding_window_view(h[:-1], n - 1)  # (len - n + 1, n - 1): h[i : i + n - 1]
    matches = (prefixes == h[-(n - 1):]).all(axis=1)
    return np.unique(h[n - 1:][matches])


def no_repeat_ngram(logits, histories, n):
    """HF's NoRepeatNGramLogitsProcessor: -inf for the tokens `banned_ngram_tokens` gives each row."""
    xp = array_module(logits)
    banned = [banned_ngram_tokens(h, n) for h in histories]
    rows = np.concatenate([np.full(len(b), i, dtype=np.int64) for i, b in enumerate(banned)])
    if len(rows) == 0:
        return logits
    out = logits.copy()
    out[xp.asarray(rows), xp.asarray(np.concatenate(banned))] = -np.inf  # (row, token) pairs sent to the device
    return out


# -- the state a generation carries: histories and counts ----------------------------------


class LogitsProcessors:
    """The processors of one generation, with the per-row state they read (histories, token counts).

    `histories` are the B prompts (lists of ids, padding left out). Call the
    object on (B, V) logits to process them, then `append(ids)` with the B
    chosen ids; `truncate(n)` forgets tokens appended after the first n
    generated ones (speculative decoding's rejected drafts). `active` is False
    when every control is off: the logits pass through untouched.
    """

    def __init__(self, histories, vocab_size, xp=np, repetition_penalty=None, frequency_penalty=0.0,
                 presence_penalty=0.0, no_repeat_ngram_size=None):
        check_processor_args(repetition_penalty, frequency_penalty, presence_penalty, no_repeat_ngram_size)
        self.xp, self.vocab_size = xp, vocab_size
        self.penalty = None if repetition_penalty in (None, 1.0) else float(repetition_penalty)
        self.frequency, self.presence = float(frequency_penalty), float(presence_penalty)
        self.ngram = None if no_repeat_ngram_size is None else int(no_repeat_ngram_size)
        self.generated = None
        self.histories = [list(map(int, h)) for h in histories]
        self.prompt_lengths = [len(h) for h in self.histories]
        B = len(self.histories)
        self.rows = xp.arange(B) if self.penalty is not None or self.frequency or self.presence else None
        # (B, V) counts on the logits' device: all tokens (for the repetition penalty) and generated ones
        self.seen = xp.zeros((B, vocab_size), dtype=xp.int32) if self.penalty is not None else None
        self.generated = xp.zeros((B, vocab_size), dtype=xp.float64) if self.frequency or self.presence else None
        if self.seen is not None:
            for i, h in enumerate(self.histories):
                self.seen[i] = xp.asarray(np.bincount(np.asarray(h, dtype=np.int64), minlength=vocab_size)
                                          .astype(np.int32)[:vocab_size])

    @property
    def active(self):
        return self.penalty is not None or self.generated is not None or self.ngram is not None

    def __call__(self, logits):
        """(B, V) logits -> the processed (B, V) logits (float64; the input is not changed)."""
        if not self.active:
            return logits
        xp = self.xp
        z = logits.astype(xp.float64)
        if self.penalty is not None:
            z = repetition_penalty(z, self.seen > 0, self.penalty)
        if self.generated is not None:
            z = frequency_presence_penalty(z, self.generated, self.frequency, self.presence)
        if self.ngram is not None:
            z = no_repeat_ngram(z, self.histories, self.ngram)
        return z

    def _count(self, ids, sign):
        ids_on_device = self.xp.asarray(np.asarray(ids, dtype=np.int64))  # B ids to the device
        if self.seen is not None:
            self.seen[self.rows, ids_on_device] += sign
        if self.generated is not None:
            self.generated[self.rows, ids_on_device] += sign

    def append(self, ids):
        """Add the (B,) host ids just chosen to every row's history and counts."""
        for h, i in zip(self.histories, ids):
            h.append(int(i))
        if self.active:
            self._count(ids, 1)

    def truncate(self, n_generated):
        """Forget every token after the first `n_generated` generated ones (all rows: they grow together)."""
        while len(self.histories[0]) > self.prompt_lengths[0] + n_generated:
            ids = [h.pop() for h in self.histories]
            if self.active:
                self._count(ids, -1)
