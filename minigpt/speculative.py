"""Speculative decoding: draft several tokens cheaply, let the model verify them all in one cached forward.

At batch 1 on a CPU every decoded token reads all the weights; a forward over
k + 1 tokens costs little more than over one. So a drafter proposes
d_1 .. d_k, the target model runs [x, d_1 .. d_k] (x the last token it has not
seen yet) through its KV cache in one pass, and gets the distributions
p_1 .. p_{k+1} of every position at once. Two drafters (as in Hugging Face):

    prompt lookup K   (`prompt_lookup_candidates`) the last n-gram of the context (n = 2, then 1) is looked
                      up earlier in the context; the up to K tokens that followed its first occurrence are the
                      draft. Free, and good whenever the output copies the input (rewriting, quoting, code).
    draft model       (`DraftModel`) a smaller GPT with the same vocabulary generates k tokens itself.

Verification (Leviathan et al. 2023; Chen et al. 2023), `accept_drafts`:

    greedy     accept d_i while d_i = argmax p_i; the first mismatch is replaced by argmax p_i, and if all k
               match, argmax p_{k+1} comes free. The tokens are exactly plain greedy decoding's.
    sampling   accept d_i with probability min(1, p_i(d_i) / q_i(d_i)) (q the draft's distribution, one-hot
               for prompt lookup); at the first rejection draw from normalize(max(0, p_i - q_i)) and stop;
               if all k are accepted, draw one more from p_{k+1}. Each token then has exactly p's
               distribution (the draws differ from plain sampling's for a seed, the distribution does not).

After a round with n accepted drafts the target's KV cache is truncated past
them (`KVCache.truncate`): the rejected drafts' keys and values are simply
overwritten by the next round. The logits processors (penalties, n-gram bans)
see each position's own history: row i is processed after d_1 .. d_{i-1}.

Past block_size the target's window slides exactly as plain decoding's
(minigpt.generation.SlidingWindow): a round never verifies past the point where
plain decoding would move the window, and the move itself is plain decoding's
(reset, one pass over the last block_size - shift + 1 tokens), so greedy
output equals plain decoding's token for token there too. Everything runs where
the logits are: per round only the k + 1 greedy ids, or the pair (accepted
count, next token), come back from a GPU.
"""

import numpy as np

from minigpt.backend import array_module, to_host
from minigpt.errors import MinigptError
from minigpt.sampling import draw_on_device, probs_on_device

PROMPT_LOOKUP_NGRAM = 2  # Hugging Face's max_matching_ngram_size default
DRAFT_TOKENS = 4  # a draft model's tokens per round


def check_speculative_args(prompt_lookup=None, draft_model=None, model=None, option=str):
    """Raise a MinigptError for speculative settings that cannot work."""
    if prompt_lookup is not None and (int(prompt_lookup) != prompt_lookup or prompt_lookup < 1):
        raise MinigptError(f"{option('prompt_lookup')} must be a whole number >= 1 (tokens drafted per step), "
                           f"got {prompt_lookup}")
    if prompt_lookup is not None and draft_model is not None:
        raise MinigptError(f"give {option('prompt_lookup')} or a draft model, not both")
    if draft_model is not None and model is not None and draft_model.config.vocab_size != model.config.vocab_size:
        raise MinigptError(f"the draft model's vocabulary ({draft_model.config.vocab_size} tokens) is not the "
                           f"model's ({model.config.vocab_size}): a draft model must share the tokenizer")


def prompt_lookup_candidates(tokens, k, max_ngram=PROMPT_LOOKUP_NGRAM):
    """Up to k drafted ids: what followed the first earlier occurrence of the context's last n-gram.

    Hugging Face's PromptLookupCandidateGenerator: n from max_ngram down to 1;
    the first occurrence (earliest) that has a continuation wins. Empty when none.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    for n in range(min(max_ngram, len(tokens) - 1), 0, -1):
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)  # starts 0 .. len - 1 - n
        hits = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
        if len(hits):
            start = hits[0] + n
            return tokens[start:start + k]
    return tokens[:0]


def accept_drafts(p, q, drafts, rng):
    """The standard acceptance rule on the device: (n accepted drafts, the next token), two host ints.

    p: (k + 1, V) target probabilities; q: (k, V) draft probabilities, or None for
    a deterministic draft (prompt lookup: q one-hot on the draft); drafts: k host ids.
    """
    xp = array_module(p)
    k = len(drafts)
    rows, d = xp.arange(k), xp.asarray(np.asarray(drafts, dtype=np.int64))
    r = xp.asarray(rng.random(k))  # k + 1 uniforms from the host, none back
    u = xp.asarray(rng.random(1))
    p_d = p[rows, d]
    if q is None:
        q_d = xp.ones(k)
        residual = p[:k].copy()
        residual[rows, d] = 0.0  # max(0, p - onehot(d))
    else:
        q_d = q[rows, d]
        residual = xp.maximum(p[:k] - q, 0.0)
    accepted = r * q_d < p_d  # r < p(d) / q(d), no division by a zero q
    n = xp.argmax(~xp.concatenate([accepted, xp.zeros(1, dtype=bool)]))  # leading accepted drafts: the first False
    candidates = xp.concatenate([residual, p[k:]], axis=0)  # (k + 1, V): where the next token is drawn
    dist = candidates[n[None]]  # (1, V), chosen on the device
    mass = dist.sum(axis=-1, keepdims=True)
    dist = xp.where(mass > 0, dist, p[n[None]])  # an empty residual only from rounding: use p
    token = draw_on_device(dist, u)[0]
    n, token = to_host(xp.stack([n, token]).astype(xp.int64))  # the one copy of the round
    return int(n), int(token)


class _Target:
    """The target model's KV cache during speculative decoding, sliding as plain decoding's window does.

    The cache holds `cached` (host ids) and `pending` is the newest token, not
    yet fed: every round feeds it with the drafts after it.
    """

    def __init__(self, model, prompt, window_shift):
        c = model.config
        self.model, self.block_size = model, c.block_size
        self.shift = max(1, c.block_size // 2) if window_shift is None else int(window_shift)
        self.cache = model.new_kv_cache()
        window = prompt[-self.block_size:]
        self.cached, self.pending = window[:0], int(window[-1])
        self._refill(window[:-1])

    def _refill(self, ids):
        self.cache.reset()
        self.cached = np.asarray(ids, dtype=np.int64)
        if len(ids):
            self.model.forward_cached(self.model.xp.asarray(self.cached[None]), self.cache, last_only=True)

    def make_room(self):
        """Move the window if plain decoding would now; then how many drafts the next round may verify."""
        if self.cache.length == self.block_size:  # plain decoding would move the window to feed `pending`
            kept = np.append(self.cached, self.pending)[-(self.block_size - self.shift + 1):]
            self._refill(kept[:-1])
        return self.block_size - self.cache.length - 1

    def verify(self, drafts):
        """Logits (k + 1, V) on the device: after pending, after d_1, .., after d_k (call make_room() first)."""
        ids = np.concatenate([[self.pending], drafts]).astype(np.int64)
        return self.model.forward_cached(self.model.xp.asarray(ids[None]), self.cache)[0]

    def accept(self, drafts, n, token):
        """Keep pending and the first n drafts in the cache; `token` is the new pending one."""
        self.cache.truncate(len(self.cached) + 1 + n)
        self.cached = np.concatenate([self.cached, [self.pending], drafts[:n]]).astype(np.int64)
        self.pending = token


class DraftModel:
    """A smaller GPT drafting for the target: its own KV cache, kept in step with the context.

    Its window is not plain decoding's (only the target's must be): when its
    cache cannot take the next round, it restarts from the last half block.
    """

    def __init__(self, model):
        self.model = model
        self.cache = model.new_kv_cache()
        self.start = 0  # the context index its window starts at
        self.fed = np.zeros(0, dtype=np.int64)  # the ids its cache holds: context[start:] up to the last round

    def propose(self, context, k, sampling, rng):
        """Up to k drafted ids (host) after `context`, and their (k, V) probabilities (None when greedy)."""
        model, xp = self.model, self.model.xp
        block_size = model.config.block_size
        k = min(k, block_size // 2)
        if k == 0:
            return np.zeros(0, dtype=np.int64), None
        if len(context) - self.start + k > block_size:  # no room: restart from the last half block
            self.start, self.fed = max(0, len(context) - block_size // 2), self.fed[:0]
        window = context[self.start:]
        same = min(len(self.fed), len(window) - 1)  # keep at least one id to feed: its logits are needed
        same = int(np.argmin(np.append(self.fed[:same] == window[:same], False)))  # the common prefix
        self.cache.truncate(min(same, self.cache.length))
        self.fed = window[:same]
        new, drafts, probs = window[same:], [], []
        for _ in range(k):
            logits = model.forward_cached(xp.asarray(new[None]), self.cache, last_only=True)[:, -1, :]
            self.fed = np.concatenate([self.fed, new])
            if sampling["temperature"] == 0:
                token = int(to_host(xp.argmax(logits, axis=-1))[0])
            else:
                q = probs_on_device(logits, **sampling)
                probs.append(q[0])
                token = int(to_host(draw_on_device(q, xp.asarray(rng.random(1))))[0])
            drafts.append(token)
            new = np.array([token], dtype=np.int64)
        return np.array(drafts, dtype=np.int64), (xp.stack(probs) if probs else None)


def speculative_steps(model, prompt, processors, sampling, rng, window_shift, prompt_lookup=None, draft_model=None,
                      draft_tokens=DRAFT_TOKENS, max_matching_ngram_size=PROMPT_LOOKUP_NGRAM, stats=None):
    """Speculative decoding of one sequence, as a generator of (1,) id arrays, one per token.

    draft_tokens: a draft model's tokens per round; max_matching_ngram_size: the longest n-gram prompt lookup
    matches (Hugging Face's name and default, 2).
    stats: a dict that, when given, counts the target's `rounds` (verifying forwards), the `drafted` and the
    `accepted` drafts (acceptance rate = accepted / drafted; tokens per forward = tokens / rounds).
    """
    check_speculative_args(prompt_lookup, draft_model, model)
    xp = model.xp
    target = _Target(model, np.asarray(prompt, dtype=np.int64), window_shift)
    drafter = None if draft_model is None else DraftModel(draft_model)
    k_max = prompt_lookup if prompt_lookup is not None else draft_tokens
    context = list(map(int, prompt))
    generated = 0
    while True:
        k = min(k_max, target.make_room())
        q = None
        if drafter is None:
            drafts = prompt_lookup_candidates(context, k, max_matching_ngram_size)
        else:
            drafts, q = drafter.propose(np.array(context, dtype=np.int64), k, sampling, rng)
        logits = target.verify(drafts)  # (k + 1, V)
        scores = _processed_rows(logits, drafts, processors)
        if sampling["temperature"] == 0:
            best = to_host(xp.argmax(scores, axis=-1)).astype(np.int64)  # k + 1 ids back
            n = int(np.argmin(np.append(best[:len(drafts)] == drafts, False)))
            token = int(best[n])
        else:
            n, token = accept_drafts(probs_on_device(scores, **sampling), q, drafts, rng)
        if stats is not None:
            for key, value in (("rounds", 1), ("drafted", len(drafts)), ("accepted", n)):
                stats[key] = stats.get(key, 0) + value
        processors.truncate(generated + n)
        processors.append([token])
        target.accept(drafts, n, token)
        for i in [*drafts[:n], token]:
            context.append(int(i))
            generated += 1
            yield np.array([i], dtype=np.int64)


def _processed_rows(logits, drafts, processors):
    """The (k + 1, V) logits after the processors, row i seeing the history extended by d_1 .. d_i."""
    if not processors.active:
        return logits
    xp = array_module(logits)
    rows = []
    for i in range(len(drafts) + 1):
        rows.append(processors(logits[i:i + 1])[0])
        if i < len(drafts):
            processors.append([drafts[i]])
    return xp.stack(rows)
