"""DataParallel: a step's global batch, cut into slices over worker threads, gives the whole batch's loss and gradients."""

import threading
from contextlib import contextmanager

import numpy as np
import pytest

import minigpt.parallel as parallel_module
from minigpt.errors import MinigptError
from minigpt.model import GPT, GPTConfig
from minigpt.optim import FlatAdamW
from minigpt.parallel import DataParallel, Slice, split_step

TINY = dict(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11)


def batch(B=5, T=8, seed=0):
    rng = np.random.default_rng(seed)
    idx, targets = rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))
    targets[0, :5] = -1  # the slices hold different numbers of valid targets ...
    targets[3, :] = -1  # ... and one row holds none
    return idx, targets


def sequential(model, idx, targets):
    """The trainer's loop before any slicing: each micro-batch whole, gradients summed and divided by A."""
    A = idx.shape[0]
    loss, grads = 0.0, None
    for a in range(A):
        _, micro_loss = model.forward(idx[a], targets[a])
        loss += float(micro_loss) / A
        g = model.backward(dloss=1.0 / A)
        grads = {k: v.copy() for k, v in g.items()} if grads is None else {k: grads[k] + g[k] for k in g}
    return loss, grads


def assert_same(p_loss, p_grads, loss, grads):
    assert float(p_loss) == pytest.approx(float(loss), rel=1e-13)
    assert list(p_grads) == list(grads)
    for name, g in grads.items():
        np.testing.assert_allclose(p_grads[name], g, rtol=1e-10, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("workers", [2, 3, 5, 7])
def test_slices_give_the_whole_batch_loss_and_gradients(workers):
    """Uneven slices, ignored targets, more workers than rows: float64 sums agree to rounding."""
    model = GPT(GPTConfig(**TINY), dtype="float64", seed=0)
    idx, targets = batch()
    loss, grads = sequential(model, idx[None], targets[None])
    parallel = DataParallel(model, workers)
    assert_same(*parallel.forward_backward(idx, targets), loss, grads)
    assert float(parallel.loss(idx, targets)) == pytest.approx(loss, rel=1e-13)
    parallel.close()


@pytest.mark.parametrize("workers, A, B", [(2, 4, 1), (2, 3, 1), (3, 4, 2), (2, 3, 5)])
def test_micro_batches_spread_over_workers_add_up_as_the_sequential_loop(workers, A, B):
    """Gradient accumulation: the workers share the micro-batches (and rows); float64 sums agree to rounding."""
    model = GPT(GPTConfig(**TINY), dtype="float64", seed=0)
    rng = np.random.default_rng(1)
    idx, targets = rng.integers(0, 11, (A, B, 8)), rng.integers(0, 11, (A, B, 8))
    targets[0, 0, :3] = -1
    loss, grads = sequential(model, idx, targets)
    parallel = DataParallel(model, workers)
    p_loss, p_grads = parallel.forward_backward(idx, targets)
    assert_same(p_loss, p_grads, loss, grads)
    if split_step(A, B, workers)[0][0].stop == B:  # whole micro-batches: added in the loop's order, bit for bit
        for name, g in grads.items():
            np.testing.assert_array_equal(p_grads[name], g, err_msg=name)
    parallel.close()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_gradients_go_into_the_optimizers_flat_buffer(workers):
    """into=FlatAdamW.grad_views: the sums land in the flat buffer itself (no pack), bit for bit the loop's."""
    model = GPT(GPTConfig(**TINY), dtype="float64", seed=0)
    rng = np.random.default_rng(3)
    idx, targets = rng.integers(0, 11, (4, 1, 8)), rng.integers(0, 11, (4, 1, 8))
    loss, grads = sequential(model, idx, targets)
    opt = FlatAdamW(model.params)
    opt.flat_grads[...] = np.nan  # whatever the buffer held before: the first slice writes, the others add
    parallel = DataParallel(model, workers)
    p_loss, p_grads = parallel.forward_backward(idx, targets, into=opt.grad_views)
    assert all(p_grads[name] is opt.grad_views[name] for name in model.params)
    for name, g in grads.items():
        np.testing.assert_array_equal(p_grads[name], g, err_msg=name)
    assert float(p_loss) == pytest.approx(loss, rel=1e-13)
    parallel.close()


def test_backward_hands_each_layer_to_a_sink():
    """GPT.backward(sink=...): every gradient exactly once, as soon as its layer is done, the same arrays' values."""
    model = GPT(GPTConfig(**TINY, tie_embeddings=False), dtype="float64", seed=0)
    idx, targets = batch()
    model.forward(idx, targets)
    grads = model.backward()
    model.forward(idx, targets)
    handed = []
    assert model.backward(sink=handed.append) is None
    names = [name for layer in handed for name in layer]
    assert sorted(names) == sorted(model.params)  # each once
    assert names.index("lm_head.weight") < names.index("transformer.h.1.mlp.c_fc.weight")  # head first, then down
    assert names.index("transformer.h.1.mlp.c_fc.weight") < names.index("transformer.h.0.mlp.c_fc.weight")
    for layer in handed:
        for name, g in layer.items():
            np.testing.assert_array_equal(g, grads[name], err_msg=name)


def test_a_gradient_ahead_of_its_turn_is_parked_and_added_in_turn_order():
    """Turn 1 arrives first: it is parked (its worker goes on), and the thread adding turn 0 adds it right after."""
    rng = np.random.default_rng(0)
    g0, g1, g2 = (rng.standard_normal(5).astype(np.float32) for _ in range(3))
    total = parallel_module.Accumulator()
    total.add_grads(2, {"w": g2})  # returns at once: parked
    total.add_grads(1, {"w": g1})
    assert "w" not in total.grads
    total.add_grads(0, {"w": g0.copy()})  # kept as is (turn 0, no `into`), then turns 1 and 2 added to it
    np.testing.assert_array_equal(total.grads["w"], (g0 + g1) + g2)  # the sequential order, bit for bit
    assert total._parked == {} and total._parked_bytes == 0
    for turn, loss in [(2, 0.3), (0, 0.1), (1, 0.2)]:  # losses in any order, summed in turn order
        total.add_loss(turn, np.float32(loss))
    assert total.loss == ((0.0 + np.float32(0.1)) + np.float32(0.2)) + np.float32(0.3)


def test_beyond_the_parking_budget_a_worker_waits_for_its_turn():
    total = parallel_module.Accumulator(park_bytes=0)
    late = threading.Thread(target=total.add_grads, args=(1, {"w": np.ones(3)}))
    late.start()
    late.join(timeout=0.2)
    assert late.is_alive()  # waiting for turn 0, nothing parked
    total.add_grads(0, {"w": np.full(3, 2.0)})
    late.join(timeout=5)
    assert not late.is_alive()
    np.testing.assert_array_equal(total.grads["w"], np.full(3, 3.0))


def test_a_failing_worker_does_not_leave_the_others_waiting():
    model = GPT(GPTConfig(**TINY), dtype="float64", seed=0)
    idx = np.random.default_rng(0).integers(0, 11, (4, 1, 8))
    parallel = DataParallel(model, 2)

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    parallel.replicas[0].forward = fail  # the worker of micro-batch 0 fails, the other waits for its turn
    with pytest.raises(RuntimeError, match="boom"):
        parallel.forward_backward(idx, idx)
    parallel.close()


def test_the_cut_deals_micro_batches_then_rows():
    assert split_step(4, 1, 2) == [[Slice(0, 0, 1), Slice(2, 0, 1)], [Slice(1, 0, 1), Slice(3, 0, 1)]]
    assert split_step(1, 12, 2) == [[Slice(0, 0, 6)], [Slice(0, 6, 12)]]
    assert split_step(1, 1, 2) == [[Slice(0, 0, 1)], []]  # nothing to spread: one slice
    shares = split_step(3, 12, 2)  # 3 micro-batches on 2 parts: each cut in two, 3 halves per part
    assert [sum(s.stop - s.start for s in share) for share in shares] == [18, 18]
    for A, B, P in [(5, 3, 4), (32, 1, 2), (2, 7, 6)]:  # every row of every micro-batch exactly once
        rows = sorted((s.micro, r) for share in split_step(A, B, P) for s in share for r in range(s.start, s.stop))
        assert rows == [(a, r) for a in range(A) for r in range(B)]


def test_dropout_masks_do_not_depend_on_the_workers():
    """Masks are seeded by (key, micro-batch, row): 1, 2 or 3 workers give the same loss and gradients."""
    rng = np.random.default_rng(2)
    idx, targets = rng.integers(0, 11, (2, 3, 8)), rng.integers(0, 11, (2, 3, 8))
    results = []
    for workers in (1, 2, 3):
        model = GPT(GPTConfig(**TINY, dropout=0.3), dtype="float64", seed=7).train()
        parallel = DataParallel(model, workers)
        results.append(parallel.forward_backward(idx, targets, dropout_key=(5, 0)))
        other = parallel.forward_backward(idx, targets, dropout_key=(5, 1))
        assert float(other[0]) != float(results[-1][0])  # another iteration: other masks
        model.eval()
        _, eval_loss = model.forward(idx[0], targets[0])
        assert float(parallel.loss(idx[0], targets[0])) == pytest.approx(float(eval_loss), rel=1e-13)
        parallel.close()
    for loss, grads in results[1:]:
        assert_same(loss, grads, *results[0])


def test_one_busy_worker_gets_every_core(monkeypatch):
    """B = 1 without accumulation: one slice, run on this thread with BLAS on every core."""
    seen = []

    @contextmanager
    def spy(n):
        seen.append(n)
        yield

    monkeypatch.setattr(parallel_module, "blas_threads", spy)
    model = GPT(GPTConfig(**TINY), dtype="float64", seed=0)
    parallel = DataParallel(model, 2)
    parallel.cores = 2
    idx, targets = batch()
    parallel.forward_backward(idx[:1], targets[:1])
    parallel.forward_backward(idx[:2], targets[:2])
    assert seen == [2, 1]
    parallel.close()


def test_one_worker_and_bad_counts():
    model = GPT(GPTConfig(**TINY), dtype="float64", seed=0)
    idx, targets = batch()
    parallel = DataParallel(model, 1)
    loss, _ = parallel.forward_backward(idx, targets)
    _, again = model.forward(idx, targets)
    assert float(loss) == pytest.approx(float(again), rel=1e-15) and len(parallel.replicas) == 1
    with pytest.raises(MinigptError, match="at least 1"):
        DataParallel(model, 0)


def test_replicas_share_the_parameters():
    model = GPT(GPTConfig(**TINY), seed=0)
    replica = model.replica()
    model.params["transformer.wte.weight"][0, 0] = 3.0  # in place, as AdamW updates
    assert replica.params["transformer.wte.weight"][0, 0] == 3.0
    assert replica.rng is not model.rng
