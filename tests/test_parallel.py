"""DataParallel: a batch split over worker threads gives the loss and gradients of the whole batch."""

import numpy as np
import pytest

from minigpt.errors import MinigptError
from minigpt.model import GPT, GPTConfig
from minigpt.parallel import DataParallel

TINY = dict(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11)


def batch(B=5, T=8, seed=0):
    rng = np.random.default_rng(seed)
    idx, targets = rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))
    targets[0, :5] = -1  # the slices hold different numbers of valid targets ...
    targets[3, :] = -1  # ... and one row holds none
    return idx, targets


@pytest.mark.parametrize("workers", [2, 3, 5, 7])
def test_slices_give_the_whole_batch_loss_and_gradients(workers):
    """Uneven slices, ignored targets, more workers than rows: float64 sums agree to rounding."""
    model = GPT(GPTConfig(**TINY), dtype="float64", seed=0)
    idx, targets = batch()
    _, loss = model.forward(idx, targets)
    grads = {k: g.copy() for k, g in model.backward().items()}
    parallel = DataParallel(model, workers)
    p_loss, p_grads = parallel.forward_backward(idx, targets)
    assert p_loss == pytest.approx(float(loss), rel=1e-13)
    assert list(p_grads) == list(grads)
    for name, g in grads.items():
        np.testing.assert_allclose(p_grads[name], g, rtol=1e-10, atol=1e-15, err_msg=name)
    assert parallel.loss(idx, targets) == pytest.approx(float(loss), rel=1e-13)
    parallel.close()


def test_dropout_is_seeded_from_the_model_and_off_in_eval_mode():
    idx, targets = batch(B=4)
    losses = []
    for _ in range(2):
        model = GPT(GPTConfig(**TINY, dropout=0.3), dtype="float64", seed=7).train()
        parallel = DataParallel(model, 2)
        losses.append([float(parallel.forward_backward(idx, targets)[0]) for _ in range(3)])
        model.eval()
        _, eval_loss = model.forward(idx, targets)
        assert float(parallel.loss(idx, targets)) == pytest.approx(float(eval_loss), rel=1e-13)
        parallel.close()
    assert losses[0] == losses[1]  # the same seed: the same masks in every worker
    assert len(set(losses[0])) == 3  # new masks at every step


def test_one_worker_is_the_model_itself():
    model = GPT(GPTConfig(**TINY), dtype="float64", seed=0)
    idx, targets = batch()
    parallel = DataParallel(model, 1)
    loss, grads = parallel.forward_backward(idx, targets)
    _, again = model.forward(idx, targets)
    assert float(loss) == float(again) and parallel.replicas == []
    with pytest.raises(MinigptError, match="at least 1"):
        DataParallel(model, 0)


def test_replicas_share_the_parameters():
    model = GPT(GPTConfig(**TINY), seed=0)
    replica = model.replica()
    model.params["transformer.wte.weight"][0, 0] = 3.0  # in place, as AdamW updates
    assert replica.params["transformer.wte.weight"][0, 0] == 3.0
    assert replica.rng is not model.rng
