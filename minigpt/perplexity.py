"""Perplexity of a model on a token sequence, over sliding windows of the context.

For tokens x_0 .. x_{N-1} the model predicts each x_t (t >= 1) from the tokens
before it. The loss is the mean negative log-likelihood and the perplexity its
exponential:

    loss = -1/(N-1) * sum_{t=1}^{N-1} log p(x_t | x_<t),      perplexity = exp(loss)

A model sees at most block_size tokens, so the sequence is cut into windows of
block_size inputs whose starts are `stride` apart (as in Hugging Face's
perplexity guide). Each target is scored once, in the first window that
reaches it: with stride < block_size the windows overlap and every target but
those of the first window has at least block_size - stride tokens of context,
which gives a lower (fairer) perplexity at the price of more forward passes.
stride = block_size gives disjoint windows (fastest).
"""

import math

import numpy as np
from tqdm import tqdm

from minigpt.backend import scalar
from minigpt.errors import MinigptError


def sliding_windows(n_tokens: int, block_size: int, stride: int, option=str):
    """(begin, end, first_scored) for each window over a sequence of n_tokens.

    The window's inputs are x[begin:end] and its targets x[begin+1:end+1];
    targets at input positions >= first_scored are the ones it scores (the
    earlier ones belong to the previous window). `option` spells a parameter's
    name as the caller's user wrote it (scripts/evaluate.py: stride -> --stride).
    """
    if not 1 <= stride <= block_size:
        raise MinigptError(f"{option('stride')} must be between 1 and the block size {block_size}, got {stride}")
    last_input = n_tokens - 1  # the final token is only ever a target
    windows, scored_until = [], 0
    for begin in range(0, max(last_input, 0), stride):
        end = min(begin + block_size, last_input)
        windows.append((begin, end, scored_until))
        scored_until = end
        if end == last_input:
            break
    return windows


def window_batch(ids: np.ndarray, windows, block_size: int):
    """Inputs and targets (B, block_size) for a list of windows, -1 marking unscored targets.

    Short windows are padded at the end with token 0; causal attention means
    the padding never affects the scored positions before it.
    """
    inputs = np.zeros((len(windows), block_size), dtype=np.int64)
    targets = np.full((len(windows), block_size), -1, dtype=np.int64)
    for row, (begin, end, first_scored) in enumerate(windows):
        inputs[row, : end - begin] = ids[begin:end]
        scored = slice(first_scored - begin, end - begin)
        targets[row, scored] = ids[begin + 1 : end + 1][scored]
    return inputs, targets


def perplexity(model, ids, stride=None, batch_size=4, progress=True, option=str):
    """(loss, perplexity, number of scored tokens) of `model` on the token ids `ids` (`option`: see sliding_windows)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) < 2:
        raise MinigptError(f"need at least 2 tokens to measure perplexity, got {ids.size}")
    if batch_size < 1:
        raise MinigptError(f"{option('batch_size')} must be >= 1, got {batch_size}")
    block_size = model.config.block_size
    windows = sliding_windows(len(ids), block_size, block_size if stride is None else stride, option)
    model.eval()
    xp = model.xp
    nll_sum, n_scored = 0.0, 0
    with tqdm(total=len(ids) - 1, unit="tok", desc="perplexity", disable=not progress) as bar:
        for start in range(0, len(windows), batch_size):
            inputs, targets = window_batch(ids, windows[start : start + batch_size], block_size)
            count = int((targets >= 0).sum())
            _, loss = model.forward(xp.asarray(inputs), xp.asarray(targets), return_logits=False)  # loss only
            nll_sum += scalar(loss) * count  # the model's loss is the mean over scored targets
            n_scored += count
            bar.update(count)
    loss = nll_sum / n_scored
    return loss, math.exp(loss), n_scored
