"""--recompute: each block's forward run again inside the backward gives the losses and gradients
of the run that kept every activation, bit for bit (assert_array_equal, not allclose)."""

import numpy as np
import pytest

from minigpt.errors import MinigptError
from minigpt.model import GPT, GPTConfig
from minigpt.optim import FlatAdamW
from minigpt.parallel import DataParallel, RowRNG
from tests.fake_world import FakeWorld
from tests.test_strict_device import cupy  # noqa: F401 (the fixture)
from tests.test_train import TEXT, read_log, run_main, train_losses

VARIANTS = {
    "gpt2": {},
    "modern": dict(norm="rmsnorm", activation="swiglu", position="rotary", tie_embeddings=False, n_kv_head=1),
    "gelu_relu2_gqa": dict(activation="relu2", n_kv_head=2),
}


def tiny(dropout=0.1, **switches):
    return GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=37, dropout=dropout, **switches)


def batch(B=3, T=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 37, (B, T)), rng.integers(0, 37, (B, T))


def loss_and_grads(model, idx, targets, steps=2):
    """Two forward/backward passes (the second draws later masks from the same generator)."""
    out = []
    for _ in range(steps):
        _, loss = model.forward(idx, targets)
        out.append((loss, model.backward()))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_recompute_gives_the_same_bits(dtype, variant, fast):
    idx, targets = batch()
    runs = []
    for recompute in (False, True):
        model = GPT(tiny(**VARIANTS[variant]), dtype=dtype, seed=0, fast=fast, recompute=recompute)
        runs.append(loss_and_grads(model, idx, targets))
    for (loss, grads), (loss_r, grads_r) in zip(*runs):
        assert loss == loss_r
        assert grads.keys() == grads_r.keys()
        for name in grads:
            np.testing.assert_array_equal(grads_r[name], grads[name], err_msg=name)


def test_recompute_keeps_only_block_inputs():
    model = GPT(tiny(), seed=0, recompute=True)
    model.forward(*batch())
    block_caches = model._caches[2]
    assert all(type(c).__name__ == "Checkpoint" and c.x.shape == (3, 16, 32) for c in block_caches)
    # each block's input is the previous block's output: distinct arrays, left as they were
    assert len({id(c.x) for c in block_caches}) == 3


def test_a_broken_replay_is_caught():
    """Without the copied generator the second run draws new masks: the gradients differ (so the test above
    would see a replay that is not exact)."""
    idx, targets = batch()
    plain = GPT(tiny(), seed=0)
    plain.forward(idx, targets)
    expected = plain.backward()
    model = GPT(tiny(), seed=0, recompute=True)
    model.forward(idx, targets)
    caches = model._caches
    model._caches = (*caches[:2], [c._replace(rng=np.random.default_rng(99)) for c in caches[2]], *caches[3:])
    grads = model.backward()
    assert not np.array_equal(grads["transformer.h.0.attn.c_attn.weight"], expected["transformer.h.0.attn.c_attn.weight"])


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("counter_based", [False, True], ids=["streams", "counter"])
def test_data_parallel_with_recompute_is_exact(workers, counter_based, monkeypatch):
    """Workers, micro-batches and RowRNG's row streams (NumPy's, or the GPU's counter-based ones on the host)."""
    if counter_based:
        monkeypatch.setattr(RowRNG, "COUNTER_BASED", ("cpu", "gpu"))
    rng = np.random.default_rng(1)
    X, Y = rng.integers(0, 37, (2, 4, 16)), rng.integers(0, 37, (2, 4, 16))
    results = []
    for recompute in (False, True):
        model = GPT(tiny(), seed=0, recompute=recompute)
        parallel = DataParallel(model, workers=workers)
        loss, grads = parallel.forward_backward(X, Y, dropout_key=(5, 0))
        results.append((loss, {k: v.copy() for k, v in grads.items()}))
        parallel.close()
    (loss, grads), (loss_r, grads_r) = results
    assert loss == loss_r
    for name in grads:
        np.testing.assert_array_equal(grads_r[name], grads[name], err_msg=name)


def test_two_ranks_with_zero1_and_recompute_are_exact():
    """Two in-process ranks, ZeRO-1 AdamW: the parameters after two steps equal those without recompute."""
    rng = np.random.default_rng(2)
    X, Y = rng.integers(0, 37, (2, 2, 16)), rng.integers(0, 37, (2, 2, 16))

    def train(recompute):
        def rank(comm):
            model = GPT(tiny(), seed=0, recompute=recompute)
            parallel = DataParallel(model, workers=1, comm=comm)
            optimizer = FlatAdamW(model.params, 1e-2, comm=comm, zero=True)
            for it in range(2):
                _, grads = parallel.forward_backward(X, Y, dropout_key=(7, it), into=optimizer.grad_views)
                optimizer.step(grads, lr=1e-2, grad_clip=1.0)
            parallel.close()
            return {k: v.copy() for k, v in model.params.items()}
        return FakeWorld(2).run(rank)

    plain, recomputed = train(False), train(True)
    for ours, theirs in zip(recomputed, plain):
        for name in theirs:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_a_generator_without_state_is_one_clear_error():
    class Stateless:
        def random(self, shape, dtype):
            return np.zeros(shape, dtype)

    model = GPT(tiny(), seed=0, recompute=True)
    model.rng = Stateless()
    with pytest.raises(MinigptError, match="--recompute with dropout"):
        model.forward(*batch())


TINY = ["--n_layer", 2, "--n_head", 2, "--n_embd", 32, "--block_size", 16, "--batch_size", 4, "--eval_iters", 2,
        "--log_interval", 1, "--sample_tokens", 0, "--warmup_iters", 2, "--eval_interval", 2, "--max_iters", 4,
        "--lr_decay_iters", 4,
        "--gradient_accumulation_steps", 2, "--dropout", 0.1, "--workers", 2]


def test_train_and_resume_with_recompute_log_the_same_losses(tmp_path, monkeypatch):
    """train.py --recompute true, stopped at 2 and resumed to 4, logs exactly the losses of a plain run."""
    corpus = tmp_path / "pigs.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "data"))
    assert run_main(*TINY, "--data", corpus, "--out_dir", tmp_path / "plain") == 0
    out = tmp_path / "recompute"
    assert run_main(*TINY, "--data", corpus, "--out_dir", out, "--recompute", "true", "--max_iters", 2) == 0
    assert run_main("--init_from", "resume", "--out_dir", out, "--max_iters", 4) == 0
    plain, recomputed = read_log(tmp_path / "plain"), read_log(out)
    assert train_losses(recomputed) == train_losses(plain) and len(train_losses(plain)) == 4
    assert [r["val_loss"] for r in recomputed if "val_loss" in r] == [r["val_loss"] for r in plain if "val_loss" in r]


@pytest.mark.parametrize("variant", ["gpt2", "modern"])
def test_recompute_under_the_strict_device_stand_in(cupy, variant):
    """The same code on (fake, strict) CuPy: the GPU's counter-based dropout streams replay exactly,
    and no step copies anything back to the host."""
    from minigpt.backend import to_host
    from tests.device_standin import EVENTS

    rng = np.random.default_rng(3)
    X, Y = rng.integers(0, 37, (2, 2, 16)), rng.integers(0, 37, (2, 2, 16))
    results = []
    for recompute in (False, True):
        model = GPT(tiny(**VARIANTS[variant]), device="gpu", seed=0, recompute=recompute)
        parallel = DataParallel(model)
        EVENTS.clear()
        loss, grads = parallel.forward_backward(X, Y, dropout_key=(5, 0))
        assert not [e for e in EVENTS if e[0] in ("sync", "d2h")]
        results.append((to_host(loss), {k: to_host(v) for k, v in grads.items()}))
    (loss, grads), (loss_r, grads_r) = results
    assert loss == loss_r
    for name in grads:
        np.testing.assert_array_equal(grads_r[name], grads[name], err_msg=name)
