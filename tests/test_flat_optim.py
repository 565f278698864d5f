"""FlatAdamW: the flat-buffer AdamW equals per-tensor AdamW + clip_grad_norm, alone and over ranks (ZeRO-1).

The ranks are simulated in one process by tests/fake_world.py (one thread per
rank, the collectives' exact semantics). Parameters: 1-D and 2-D tensors
interleaved in the dict, 65 elements in all, a count that 2 and 3 do not divide.
"""

import ctypes
import re
import shutil
import subprocess

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.backend import gpu_available, scalar, to_device, to_host
from minigpt.checkpoint import load_optimizer_state, save_checkpoint
from minigpt.errors import MinigptError
from minigpt import optim as adamw_kernels  # the flat step and its NumPy twin live in optim
from minigpt.kernels import adamw_cuda
from minigpt.model import GPT, GPTConfig
from minigpt.optim import AdamW, FlatAdamW, clip_grad_norm
from minigpt.tokenizer import CharTokenizer
from tests.fake_world import FakeWorld

SHAPES = {"h.0.ln.bias": (5,), "h.0.attn.weight": (4, 5), "h.0.ln.weight": (7,), "wte.weight": (11, 3)}  # 65 elements
HYPER = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
LRS = [1e-2, 8e-3, 5e-3, 3e-3, 2e-3]
TOL = 1e-10


def initial_params(seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape) for name, shape in SHAPES.items()}


def rank_grads(world_size, steps=len(LRS), seed=1):
    """grads[step][rank]: each rank's own gradient sums."""
    rng = np.random.default_rng(seed)
    return [[{n: rng.standard_normal(s) for n, s in SHAPES.items()} for _ in range(world_size)] for _ in range(steps)]


def summed(per_rank):
    """The gradients summed over ranks, in rank order (as the collectives sum them)."""
    total = {n: g.copy() for n, g in per_rank[0].items()}
    for grads in per_rank[1:]:
        for n, g in grads.items():
            total[n] += g
    return total


def reference_run(grads_per_step, grad_clip, params=None):
    """Per-tensor AdamW + clip_grad_norm on the summed gradients: (params after each step, norms)."""
    params = initial_params() if params is None else params
    opt = AdamW(params, **HYPER)
    history, norms = [], []
    for per_rank, lr in zip(grads_per_step, LRS):
        grads = summed(per_rank)
        norms.append(scalar(clip_grad_norm(grads, grad_clip)) if grad_clip > 0 else None)
        opt.step(grads, lr=lr)
        history.append({n: p.copy() for n, p in params.items()})
    return history, norms, opt


def max_rel(got: dict, want: dict) -> float:
    return max(float(np.abs(to_host(got[n]) - want[n]).max() / np.abs(want[n]).max()) for n in want)


@pytest.mark.parametrize("grad_clip", [0.0, 1.0, 100.0], ids=["no-clip", "clipping", "clip-inactive"])
def test_flat_adamw_equals_per_tensor_adamw_and_clipping(device, grad_clip):
    grads = rank_grads(1)
    want, want_norms, _ = reference_run(grads, grad_clip)
    params = {n: to_device(p, device) for n, p in initial_params().items()}
    opt = FlatAdamW(params, **HYPER)
    for k, (per_rank, lr) in enumerate(zip(grads, LRS)):
        norm = opt.step({n: to_device(g, device) for n, g in per_rank[0].items()}, lr=lr, grad_clip=grad_clip)
        assert max_rel(params, want[k]) <= TOL, f"step {k + 1}"
        if grad_clip > 0:
            assert scalar(norm) == pytest.approx(want_norms[k], rel=1e-12)
        else:
            assert norm is None
    assert opt.t == len(LRS)
    if grad_clip == 1.0:
        assert min(want_norms) > 1.0  # the clipping case really clips
    if grad_clip == 100.0:
        assert max(want_norms) < 100.0


def test_flat_adamw_float32_matches_per_tensor_to_rounding(device):
    grads = rank_grads(1)
    want, _, _ = reference_run(grads, 1.0)
    params = {n: to_device(p, device, np.float32) for n, p in initial_params().items()}
    opt = FlatAdamW(params, **HYPER)
    for per_rank, lr in zip(grads, LRS):
        opt.step({n: to_device(g, device, np.float32) for n, g in per_rank[0].items()}, lr=lr, grad_clip=1.0)
    assert all(p.dtype == np.float32 for p in params.values())
    assert max_rel(params, want[-1]) <= 1e-5


def test_params_become_views_of_one_buffer_with_decayed_tensors_first():
    params = initial_params()
    before = {n: p.copy() for n, p in params.items()}
    opt = FlatAdamW(params, **HYPER)
    assert list(params) == list(SHAPES)  # names and order kept
    for name, p in params.items():
        assert p.shape == SHAPES[name] and np.shares_memory(p, opt.flat_params)
        np.testing.assert_array_equal(p, before[name])
    decayed = [n for n in SHAPES if len(SHAPES[n]) == 2]
    assert opt.decay_end == sum(params[n].size for n in decayed)
    ranges = sorted(opt.layout[n][:2] for n in decayed)
    assert [a for a, _ in ranges] == [0] + [b for _, b in ranges[:-1]]  # back to back from 0 ...
    assert ranges[-1][1] == opt.decay_end  # ... to decay_end: decay is one slice
    # with zero gradients Adam's step is 0: only the decoupled decay of the 2-D tensors moves anything
    opt.step({n: np.zeros(s) for n, s in SHAPES.items()}, lr=0.5)
    for name in SHAPES:
        factor = 1 - 0.5 * HYPER["weight_decay"] if name in decayed else 1.0
        np.testing.assert_allclose(params[name], before[name] * factor, rtol=1e-15)


def test_model_and_its_replicas_train_through_the_views():
    """One step on a tiny GPT from its backward: the same as per-tensor AdamW, seen by a replica too."""
    config = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=8, vocab_size=13)
    model, twin = GPT(config, dtype="float64", seed=0), GPT(config, dtype="float64", seed=0)
    replica = model.replica()
    idx = np.random.default_rng(0).integers(0, 13, size=(2, 8))
    opt, ref = FlatAdamW(model.params, **HYPER), AdamW(twin.params, **HYPER)
    for _ in range(2):
        model.forward(idx, idx)
        twin.forward(idx, idx)
        opt.step(model.backward(), grad_clip=0.5)
        grads = twin.backward()
        clip_grad_norm(grads, 0.5)
        ref.step(grads)
    assert max_rel(model.params, twin.params) <= TOL
    _, loss = replica.forward(idx, idx)  # the replica reads the updated views
    _, want = twin.forward(idx, idx)
    assert scalar(loss) == pytest.approx(scalar(want), rel=1e-12)
    assert scalar(loss) != pytest.approx(scalar(GPT(config, dtype="float64", seed=0).forward(idx, idx)[1]), rel=1e-6)


def test_gradients_written_into_grad_views_skip_the_pack():
    grads = rank_grads(1)
    want, _, _ = reference_run(grads, 1.0)
    params = initial_params()
    opt = FlatAdamW(params, **HYPER)
    for per_rank, lr in zip(grads, LRS):
        for name, g in per_rank[0].items():
            opt.grad_views[name][...] = g  # as a trainer accumulating micro-batches in place would
        opt.step(opt.grad_views, lr=lr, grad_clip=1.0)
    assert max_rel(params, want[-1]) <= TOL


def test_replacing_a_parameter_array_is_caught():
    params = initial_params()
    opt = FlatAdamW(params, **HYPER)
    params["wte.weight"] = np.zeros(SHAPES["wte.weight"])
    with pytest.raises(RuntimeError, match="wte.weight.*was replaced"):
        opt.step({n: np.zeros(s) for n, s in SHAPES.items()})


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(betas=(0.9, 1.0)), dict(weight_decay=-0.1)])
def test_flat_adamw_rejects_impossible_hyperparameters(bad):
    with pytest.raises(MinigptError):
        FlatAdamW(initial_params(), **{**HYPER, **bad})


# ---------------------------------------------------------------------------
# over ranks (fake world)
# ---------------------------------------------------------------------------


def distributed_run(world_size, zero, grad_clip, grads=None, steps=len(LRS), state=None):
    """Every rank's (params after each step, its communicator's calls, the final state_dict)."""
    grads = rank_grads(world_size) if grads is None else grads

    def rank_main(comm):
        params = initial_params()
        opt = FlatAdamW(params, **HYPER, comm=comm, zero=zero)
        if state is not None:
            opt.load_state_dict(*state)
        history = []
        for per_rank, lr in list(zip(grads, LRS))[:steps]:
            opt.step(per_rank[comm.rank], lr=lr, grad_clip=grad_clip)
            history.append({n: p.copy() for n, p in params.items()})
        return history, list(comm.calls), opt.state_dict()

    return FakeWorld(world_size).run(rank_main)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_zero1_equals_unsharded_adamw(world_size, grad_clip):
    grads = rank_grads(world_size)
    want, _, _ = reference_run(grads, grad_clip)
    results = distributed_run(world_size, zero=True, grad_clip=grad_clip, grads=grads)
    padded = -(-65 // world_size) * world_size  # 66 for 2 and 3 ranks
    for rank, (history, calls, _) in enumerate(results):
        for k in range(len(LRS)):
            assert max_rel(history[k], want[k]) <= TOL, f"rank {rank}, step {k + 1}"
        # per step: one reduce-scatter of the gradients, the 1-element norm when clipping, one all-gather
        per_step = [("reduce_scatter", padded)] + [("all_reduce", 1)] * (grad_clip > 0) + [("all_gather", padded)]
        assert calls[: len(LRS) * len(per_step)] == per_step * len(LRS)
    for history, _, _ in results[1:]:  # every rank holds the very same parameters
        for name in SHAPES:
            np.testing.assert_array_equal(history[-1][name], results[0][0][-1][name])


def test_zero1_keeps_moments_only_for_its_shard():
    def rank_main(comm):
        opt = FlatAdamW(initial_params(), **HYPER, comm=comm, zero=True)
        return opt.m.size, opt.v.size, opt.flat_params.size

    assert FakeWorld(3).run(rank_main) == [(22, 22, 66)] * 3


@pytest.mark.parametrize("world_size", [2, 3])
def test_all_reduce_mode_equals_one_process_with_summed_gradients(world_size):
    grads = rank_grads(world_size)
    want, _, _ = reference_run(grads, 1.0)
    results = distributed_run(world_size, zero=False, grad_clip=1.0, grads=grads)
    for history, calls, _ in results:
        for k in range(len(LRS)):
            assert max_rel(history[k], want[k]) <= TOL
        assert calls[: len(LRS)] == [("all_reduce", 65)] * len(LRS)  # one collective per step, no padding


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_state_dict_equals_unsharded(world_size):
    grads = rank_grads(world_size)
    _, _, reference = reference_run(grads, 1.0)
    want_tensors, want_meta = reference.state_dict()
    for _, _, (tensors, metadata) in distributed_run(world_size, zero=True, grad_clip=1.0, grads=grads):
        assert metadata == want_meta
        assert list(tensors) == list(want_tensors)  # m.<name> then v.<name>, in the params' order
        assert max_rel(tensors, want_tensors) <= TOL
        assert all(isinstance(t, np.ndarray) and t.shape == want_tensors[k].shape for k, t in tensors.items())


@pytest.mark.parametrize("resume_world_size", [1, 3])
def test_state_saved_on_two_ranks_resumes_on_any_world_size(resume_world_size):
    """3 steps on 2 ranks, then the last 2 steps on 1 or 3 ranks: the same as 5 unsharded steps."""
    grads_2 = rank_grads(2)
    # the gradient sums the resumed world sees: the same totals, split over its own ranks
    grads_resumed = [[summed(per_rank)] + [{n: np.zeros(s) for n, s in SHAPES.items()}] * (resume_world_size - 1)
                     for per_rank in grads_2]
    want, _, _ = reference_run(grads_2, 1.0)
    history, _, state = distributed_run(2, zero=True, grad_clip=1.0, grads=grads_2, steps=3)[0]
    assert state[1]["step"] == "3"

    params = {n: p.copy() for n, p in history[-1].items()}
    if resume_world_size == 1:
        opt = FlatAdamW(params, **HYPER)
        opt.load_state_dict(*state)
        for per_rank, lr in zip(grads_resumed[3:], LRS[3:]):
            opt.step(per_rank[0], lr=lr, grad_clip=1.0)
        final = [params]
    else:

        def rank_main(comm):
            mine = {n: p.copy() for n, p in history[-1].items()}
            opt = FlatAdamW(mine, **HYPER, comm=comm, zero=True)
            opt.load_state_dict(*state)
            for per_rank, lr in zip(grads_resumed[3:], LRS[3:]):
                opt.step(per_rank[comm.rank], lr=lr, grad_clip=1.0)
            return mine

        final = FakeWorld(resume_world_size).run(rank_main)
    for params in final:
        assert max_rel(params, want[-1]) <= TOL


def test_state_dict_is_interchangeable_with_per_tensor_adamw():
    grads = rank_grads(1)
    want, _, reference = reference_run(grads, 1.0)
    params = {n: p.copy() for n, p in want[2].items()}
    opt = FlatAdamW(params, **HYPER)
    _, _, at_three = reference_run(grads[:3], 1.0)
    opt.load_state_dict(*at_three.state_dict())
    for per_rank, lr in zip(grads[3:], LRS[3:]):
        opt.step(per_rank[0], lr=lr, grad_clip=1.0)
    assert max_rel(params, want[-1]) <= TOL
    back = AdamW({n: p.copy() for n, p in params.items()}, **HYPER)
    back.load_state_dict(*opt.state_dict())
    assert back.t == reference.t and max_rel(back.m, {n: to_host(m) for n, m in reference.m.items()}) <= TOL


def test_state_of_another_model_is_a_clear_error():
    opt = FlatAdamW(initial_params(), **HYPER)
    tensors, metadata = FlatAdamW({"w": np.zeros((2, 2))}).state_dict()
    with pytest.raises(MinigptError, match="another model"):
        opt.load_state_dict(tensors, metadata)


def test_checkpoint_holds_the_flat_optimizer_in_todays_format(tmp_path):
    tokenizer = CharTokenizer.train("abcdefgh ij\n")
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=tokenizer.vocab_size), seed=0)
    opt = FlatAdamW(model.params, lr=1e-2)
    opt.step({k: np.ones_like(p) for k, p in model.params.items()}, grad_clip=1.0)
    path = save_checkpoint(tmp_path / "latest", model, tokenizer, opt, {"iter": 1})
    tensors, metadata = load_optimizer_state(path)
    assert metadata["step"] == "1"
    assert set(tensors) == {f"{kind}.{name}" for kind in "mv" for name in model.params}
    np.testing.assert_array_equal(GPT.from_pretrained(path).params["transformer.h.0.mlp.c_fc.weight"],
                                  model.params["transformer.h.0.mlp.c_fc.weight"])
    resumed = FlatAdamW(GPT.from_pretrained(path).params, lr=1e-2)
    resumed.load_state_dict(tensors, metadata)
    np.testing.assert_array_equal(resumed.m, opt.m)
    np.testing.assert_array_equal(resumed.v, opt.v)


def test_block_wise_passes_equal_whole_buffer_passes(monkeypatch):
    """The CPU twin works in blocks of CHUNK elements; blocks that cut through the decayed range change nothing."""
    grads = rank_grads(1)
    want, _, _ = reference_run(grads, 1.0)
    monkeypatch.setattr(adamw_kernels, "CHUNK", 7)  # 65 elements: 10 blocks, one straddling decay_end (53)
    params = initial_params()
    opt = FlatAdamW(params, **HYPER)
    assert opt.decay_end % 7 != 0
    for per_rank, lr in zip(grads, LRS):
        opt.step(per_rank[0], lr=lr, grad_clip=1.0)
    assert max_rel(params, want[-1]) <= TOL


@pytest.mark.parametrize("threads", [2, 3])
def test_blocks_shared_by_threads_give_the_same_bits(monkeypatch, threads):
    """FlatAdamW(threads=n): n threads take every n-th block; the parameters and moments are bit for bit one thread's."""
    grads = rank_grads(1)
    monkeypatch.setattr(adamw_kernels, "CHUNK", 7)  # 10 blocks, one straddling decay_end
    block, ran_on = adamw_kernels._adamw_block, set()

    def recorded_block(*args):
        ran_on.add(threading.get_ident())
        block(*args)

    monkeypatch.setattr(adamw_kernels, "_adamw_block", recorded_block)
    runs = []
    for n in (1, threads):
        params = initial_params()
        opt = FlatAdamW(params, **HYPER, threads=n)
        for per_rank, lr in zip(grads, LRS):
            opt.step(per_rank[0], lr=lr, grad_clip=1.0)
        runs.append((params, opt.m.copy(), opt.v.copy()))
    (one, m1, v1), (many, m_n, v_n) = runs
    assert all(np.array_equal(one[name], many[name]) for name in one)
    assert np.array_equal(m1, m_n) and np.array_equal(v1, v_n)
    assert len(ran_on) == threads  # the blocks really ran on that many threads (one of them the caller's)


class OneRank:
    """A world of one, as minigpt.distributed.SingleProcess: FlatAdamW needs none of its collectives."""

    rank, world_size = 0, 1

    def all_reduce(self, buf):
        raise AssertionError("a world of one needs no all_reduce")

    reduce_scatter = all_gather = all_reduce


@pytest.mark.parametrize("zero", [False, True])
def test_a_world_of_one_makes_no_collective_calls(zero):
    grads = rank_grads(1)
    want, _, _ = reference_run(grads, 1.0)
    params = initial_params()
    opt = FlatAdamW(params, **HYPER, comm=OneRank(), zero=zero)
    for per_rank, lr in zip(grads, LRS):
        opt.step(per_rank[0], lr=lr, grad_clip=1.0)
    assert max_rel(params, want[-1]) <= TOL
    assert opt.m.size == 65  # nothing padded, nothing sharded


# ---------------------------------------------------------------------------
# the CUDA kernel against its NumPy twin (runs where a GPU is)
# ---------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 1000, 1_500_001])  # the last is more than one grid-stride sweep (4096 x 256)
@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_adamw_kernel_matches_numpy_twin(dtype, n, max_norm):
    rng = np.random.default_rng(n)
    p, g, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    v = rng.random(n).astype(dtype)
    sumsq = np.array([np.vdot(g, g)], dtype=dtype)
    scalars = adamw_kernels.AdamWScalars.at(t=3, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    device = [to_device(x, "gpu") for x in (p, g, m, v, sumsq)]
    adamw_kernels.adamw_step(*device, max_norm, n // 3, scalars)
    adamw_kernels.adamw_step(p, g, m, v, sumsq, max_norm, n // 3, scalars)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    for got, want in zip((device[0], device[2], device[3]), (p, m, v)):
        np.testing.assert_allclose(to_host(got), want, **tol)


def test_fake_world_surfaces_a_failing_rank_instead_of_hanging():
    def rank_main(comm):
        if comm.rank == 1:
            raise ValueError("rank 1 failed")
        comm.all_reduce(np.zeros(1))

    with pytest.raises(ValueError, match="rank 1 failed"):
        FakeWorld(2).run(rank_main)


def test_fake_world_rejects_mismatched_collectives():
    def rank_main(comm):
        comm.all_reduce(np.zeros(1 + comm.rank))

    with pytest.raises(AssertionError, match="disagree"):
        FakeWorld(2).run(rank_main)


@settings(max_examples=20, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=2).map(tuple), min_size=1, max_size=4),
    world_size=st.integers(1, 4),
    grad_clip=st.sampled_from([0.0, 0.5]),
)
def test_zero1_equals_unsharded_for_any_parameter_count(shapes, world_size, grad_clip):
    """Any shapes, as few elements as ranks or fewer (a rank may hold nothing but padding)."""
    names = [f"p{i}" for i in range(len(shapes))]
    rng = np.random.default_rng(len(shapes) * 10 + world_size)
    init = {n: rng.standard_normal(s) for n, s in zip(names, shapes)}
    grads = [[{n: rng.standard_normal(s) for n, s in zip(names, shapes)} for _ in range(world_size)] for _ in range(3)]

    reference = {n: p.copy() for n, p in init.items()}
    opt = AdamW(reference, **HYPER)
    for per_rank in grads:
        total = summed(per_rank)
        if grad_clip > 0:
            clip_grad_norm(total, grad_clip)
        opt.step(total)

    def rank_main(comm):
        params = {n: p.copy() for n, p in init.items()}
        flat = FlatAdamW(params, **HYPER, comm=comm, zero=True)
        for per_rank in grads:
            flat.step(per_rank[comm.rank], grad_clip=grad_clip)
        return params

    for params in FakeWorld(world_size).run(rank_main):
        assert max_rel(params, reference) <= TOL


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adamw_kernel_launch_matches_the_kernels_signature(monkeypatch, dtype):
    """On the CPU: the arguments handed to the CUDA kernel match its C parameters by name, order and type."""
    launches = []
    monkeypatch.setattr(adamw_cuda, "raw_kernel", lambda source, name, dt: lambda *launch: launches.append(launch))
    p, g, m, v = (np.full(1000, k, dtype=dtype) for k in range(4))
    sumsq = np.ones(1, dtype=dtype)
    scalars = adamw_kernels.AdamWScalars.at(t=2, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    adamw_cuda.adamw_step_cuda(p, g, m, v, sumsq, 0.5, 300, scalars)
    (grid, block, args), = launches
    assert grid[0] * block[0] >= 1000

    signature = re.search(r"adamw_flat_step\((.*?)\)\s*\{", adamw_cuda.ADAMW_SOURCE.code, re.S).group(1)
    declarations = [d.split() for d in signature.split(",")]  # e.g. ["const", "T*", "g"], ["long", "long", "n"]
    assert len(declarations) == len(args)
    named = {}
    for declaration, arg in zip(declarations, args):
        ctype, name = " ".join(declaration[:-1]), declaration[-1]
        named[name] = arg
        if ctype.endswith("T*"):
            assert isinstance(arg, np.ndarray) and arg.dtype == dtype, name
        elif ctype == "T":
            assert type(arg) is np.dtype(dtype).type, f"{name}: {type(arg)} would not be passed as {dtype}"
        else:
            assert ctype == "long long" and type(arg) is np.int64, name
    assert all(named[k] is x for k, x in dict(p=p, g=g, m=m, v=v, sumsq=sumsq).items())
    assert named["max_norm"] == 0.5 and named["decay_end"] == 300 and named["n"] == 1000
    for field in adamw_kernels.AdamWScalars._fields:
        assert named[field] == pytest.approx(getattr(scalars, field), rel=1e-6), field


def kernel_parameters():
    """[(C type, name)] of adamw_flat_step's parameters, read from its CUDA source."""
    signature = re.search(r"adamw_flat_step\((.*?)\)\s*\{", adamw_cuda.ADAMW_SOURCE.code, re.S).group(1)
    return [(" ".join(d.split()[:-1]), d.split()[-1]) for d in signature.split(",")]


@pytest.fixture(scope="module")
def kernel_on_the_host(tmp_path_factory):
    """The CUDA kernel's very source compiled as C++ for the CPU: one 'thread' walks the whole grid-stride loop."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler (c++ or g++) on the PATH")
    params = kernel_parameters()
    wrappers = []
    for ctype in ("float", "double"):
        decls = ", ".join(f"{t.replace('T', ctype)} {n}" for t, n in params)
        wrappers.append(f'extern "C" void adamw_{ctype}({decls}) {{ '
                        f'adamw_flat_step<{ctype}>({", ".join(n for _, n in params)}); }}')
    source = tmp_path_factory.mktemp("kernel") / "adamw_host.cpp"
    source.write_text("#include <cmath>\nusing std::sqrt;\n#define __global__\n#define __device__\n"
                      "#define __forceinline__ inline\nstruct Dim { unsigned x; };\n"
                      "static const Dim blockIdx{0}, threadIdx{0}, blockDim{1}, gridDim{1};\n"
                      + adamw_cuda.ADAMW_SOURCE.code + "\n".join(wrappers) + "\n")
    library = source.with_suffix(".so")
    # -ffp-contract=off: no fused multiply-adds, so the host build rounds like NumPy does
    result = subprocess.run([compiler, "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(library), str(source)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return ctypes.CDLL(str(library)), params


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("max_norm", [0.0, 1.0, 1e3], ids=["no-clip", "clipping", "clip-inactive"])  # ||g|| ~ 32
def test_adamw_kernel_source_computes_what_the_numpy_twin_does(kernel_on_the_host, dtype, max_norm):
    """The kernel's arithmetic, run on the CPU from its CUDA source, against the NumPy twin: bit for bit."""
    library, params = kernel_on_the_host
    n = 1001
    rng = np.random.default_rng(7)
    p, g, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    v = rng.random(n).astype(dtype)
    sumsq = np.array([np.vdot(g, g)], dtype=dtype)
    scalars = adamw_kernels.AdamWScalars.at(t=3, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours = [x.copy() for x in (p, g, m, v)]

    launches = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adamw_cuda, "raw_kernel", lambda source, name, dt: lambda *launch: launches.append(launch))
        adamw_cuda.adamw_step_cuda(*ours, sumsq, max_norm, 400, scalars)
    (_, _, args), = launches
    scalar_type = ctypes.c_float if dtype == "float32" else ctypes.c_double
    c_args = []
    for (ctype, _), arg in zip(params, args):
        if ctype.endswith("T*"):
            c_args.append(arg.ctypes.data_as(ctypes.c_void_p))
        elif ctype == "T":
            c_args.append(scalar_type(arg))
        else:
            c_args.append(ctypes.c_longlong(int(arg)))
    getattr(library, f"adamw_{'float' if dtype == 'float32' else 'double'}")(*c_args)

    adamw_kernels.adamw_step_numpy(p, g, m, v, sumsq, max_norm, 400, scalars)
    for got, want, name in zip((ours[0], ours[2], ours[3]), (p, m, v), "pmv"):
        np.testing.assert_array_equal(got, want, err_msg=name)
