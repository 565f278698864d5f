"""Learning a byte-level BPE vocabulary from a corpus (Sennrich et al. 2016, on bytes as in GPT-2).

Start from the 256 single-byte tokens and repeat: find the most frequent
adjacent pair of tokens, make it a new token, and replace the pair by it
everywhere. On "aaabdaaabac" that learns aa, then ab, then aa+ab.

Two things keep this fast enough for a few megabytes of text in pure Python:

- Words, not the corpus. GPT-2's pre-tokenization splits the text into words
  (which also keeps merges from crossing word boundaries); equal words are
  counted once and weighted by their frequency.
- Incremental counts. Pair counts are computed once. A merge changes only the
  words containing the merged pair, so only their pairs' counts are updated
  (an index from each pair to the words containing it finds them), and a heap
  keyed by count hands out the next most frequent pair.

Ties are broken deterministically: among equally frequent pairs the one whose
(left bytes, right bytes) sort first wins.
"""

import heapq
from collections import Counter, defaultdict

import regex

from minigpt.errors import MinigptError
from minigpt.tokenizer.byte_level import GPT2_SPLIT_PATTERN, bytes_to_unicode, replace_lone_surrogates


def train_bpe(text: str, vocab_size: int, special_tokens) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn merges until the vocabulary holds `vocab_size` tokens, special tokens included.

    Returns (vocab, merges) in the format of GPT-2's files: token strings
    written through `bytes_to_unicode` -> ids (the 256 bytes first, then one id
    per new token, then the special tokens), and the merged pairs in order.
    Stops early if the text has no pair left to merge.
    """
    special_tokens = list(dict.fromkeys(special_tokens))
    if not all(isinstance(token, str) and token for token in special_tokens):
        raise MinigptError(f"special tokens must be non-empty strings, got {special_tokens!r}")
    if vocab_size < 256 + len(special_tokens):
        raise MinigptError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs 256 byte "
                           f"tokens plus {len(special_tokens)} special tokens")

    byte_to_char = bytes_to_unicode()
    byte_chars = list(byte_to_char.values())          # id -> token string, ids 0..255 first
    vocab = {char: i for i, char in enumerate(byte_chars)}
    token_strings = list(byte_chars)
    token_bytes = [bytes([b]) for b in byte_to_char]  # id -> bytes
    byte_ids = [vocab[byte_to_char[b]] for b in range(256)]

    word_counts = count_words(text, special_tokens)
    words = [[byte_ids[b] for b in word.encode("utf-8")] for word in word_counts]
    frequencies = list(word_counts.values())
    pair_counts, pair_words = count_pairs(words, frequencies)
    heap = [(-count, token_bytes[a], token_bytes[b], a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)

    merges = []
    n_learned = vocab_size - len(special_tokens)
    while len(vocab) < n_learned and heap:
        negative_count, left_bytes, right_bytes, left, right = heapq.heappop(heap)
        if pair_counts.get((left, right)) != -negative_count:
            continue  # an outdated heap entry: this pair's count has changed since
        merged_bytes = left_bytes + right_bytes
        merged_string = token_strings[left] + token_strings[right]
        # Two different pairs can spell the same bytes (a+bc, ab+c): they share one id.
        new_id = vocab.setdefault(merged_string, len(vocab))
        if new_id == len(token_bytes):
            token_bytes.append(merged_bytes)
            token_strings.append(merged_string)
        merges.append((token_strings[left], token_strings[right]))
        changed = apply_merge(words, frequencies, pair_counts, pair_words, (left, right), new_id)
        for a, b in changed:
            heapq.heappush(heap, (-pair_counts[a, b], token_bytes[a], token_bytes[b], a, b))

    for token in special_tokens:
        if token in vocab:
            raise MinigptError(f"special token {token!r} is also a learned token; choose another")
        vocab[token] = len(vocab)
    return vocab, merges


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of `pair` in `ids`, scanning left to right, by `new_id`."""
    first, second = pair
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == first and ids[i + 1] == second:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def count_words(text: str, special_tokens) -> Counter:
    """How often each pre-tokenized word occurs; special tokens are cut out first."""
    text = replace_lone_surrogates(text)
    if special_tokens:
        specials = regex.compile("|".join(regex.escape(token) for token in special_tokens))
        chunks = specials.split(text)
    else:
        chunks = [text]
    pattern = regex.compile(GPT2_SPLIT_PATTERN)
    word_counts = Counter()
    for chunk in chunks:
        word_counts.update(pattern.findall(chunk))
    return word_counts


def count_pairs(words, frequencies):
    """Count each adjacent pair over all words, weighted by word frequency.

    Returns (pair -> count, pair -> set of indices of the words containing it).
    """
    pair_counts = defaultdict(int)
    pair_words = defaultdict(set)
    for index, (ids, frequency) in enumerate(zip(words, frequencies)):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] += frequency
            pair_words[pair].add(index)
    return pair_counts, pair_words


def apply_merge(words, frequencies, pair_counts, pair_words, pair, new_id) -> list[tuple[int, int]]:
    """Merge `pair` into `new_id` in every word containing it, updating the counts in place.

    Each such word's old pairs are subtracted and its new pairs added (pairs
    away from the merge cancel out). Returns the pairs whose count changed and
    is still positive, which need a fresh heap entry. The index `pair_words`
    may keep words that no longer contain a pair; they are skipped here.
    """
    delta = defaultdict(int)
    for index in pair_words.pop(pair):
        ids = words[index]
        merged = merge_pair(ids, pair, new_id)
        if len(merged) == len(ids):
            continue
        frequency = frequencies[index]
        for old in zip(ids, ids[1:]):
            delta[old] -= frequency
        for new in zip(merged, merged[1:]):
            delta[new] += frequency
            pair_words[new].add(index)
        words[index] = merged
    changed = []
    for changed_pair, difference in delta.items():
        if difference == 0:
            continue
        pair_counts[changed_pair] += difference
        if pair_counts[changed_pair] > 0:
            changed.append(changed_pair)
        else:
            del pair_counts[changed_pair]
            pair_words.pop(changed_pair, None)
    return changed
