"""What a review of the GPU path against CuPy 14.2 found (issue 25), checked on the CPU under the strict stand-in.

* each rank selects its own GPU before anything touches one (the probe kernel included), and a launcher that
  gives each rank one visible GPU (srun --gpus-per-task=1, a CUDA_VISIBLE_DEVICES wrapper) is accepted;
* every kernel launch stays within CUDA's grid limits, LayerNorm backward's included at millions of rows;
* an out-of-range target makes the cross-entropy kernel write NaN, and token ids are checked on the host
  before a batch goes to the device;
* dropout on the GPU makes no cuRAND generator per step.
"""

import numpy as np
import pytest

from minigpt import distributed
from minigpt.distributed import Communicator, local_gpu
from minigpt.errors import MinigptError
from tests import device_standin
from tests.test_distributed import REPO, mpiexec, needs_mpi
from tests.test_train import corpus, run_main  # noqa: F401 (corpus: a fixture)

TINY = ["--n_layer", 1, "--n_head", 2, "--n_embd", 16, "--block_size", 8, "--batch_size", 4, "--eval_iters", 1,
        "--log_interval", 1, "--sample_tokens", 4, "--eval_interval", 100, "--workers", 1]


class RankOfTwo(Communicator):
    """Rank 1 of a 2-rank world on one machine, whose peer sends what this rank has (no MPI needed)."""

    rank, world_size, local_rank, local_size = 1, 2, 1, 2

    def sum_host(self, values):
        return np.asarray(values, dtype=np.float64) * 2

    def broadcast(self, obj):
        return obj

    def barrier(self) -> None:
        pass


@pytest.fixture
def rank_one(monkeypatch):
    monkeypatch.setattr(distributed, "_WORLD", RankOfTwo())


def train_on_rank_one(tmp_path, corpus, devices, visible_list):
    """A --device gpu run as rank 1 of 2, seeing `devices` GPUs; returns the stand-in's work per device id."""
    with pytest.MonkeyPatch.context() as mp:
        if visible_list is None:
            mp.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            mp.setenv("CUDA_VISIBLE_DEVICES", visible_list)
        from minigpt import backend

        mp.setattr(backend, "_PROBED", False)  # a fresh process: the probe kernel runs in this run
        with device_standin.installed(devices=devices):
            code = run_main(*TINY, "--data", corpus, "--device", "gpu", "--max_iters", 2, "--dropout", 0.1,
                            "--out_dir", tmp_path / "out")
            return code, dict(device_standin.ON_DEVICE)


def test_rank_one_of_two_touches_only_its_own_gpu(tmp_path, corpus, rank_one):
    """Every array, kernel (the probe first) and the NCCL communicator of rank 1 are on GPU 1, none on GPU 0."""
    code, work = train_on_rank_one(tmp_path, corpus, devices=2, visible_list=None)
    assert code == 0
    assert set(work) == {1} and work[1] > 100, work


def test_a_rank_that_sees_only_its_own_gpu_takes_it(tmp_path, corpus, rank_one):
    """srun --gpus-per-task=1 or a CUDA_VISIBLE_DEVICES wrapper: rank 1 sees one GPU (its own) as device 0."""
    code, work = train_on_rank_one(tmp_path, corpus, devices=1, visible_list="1")
    assert code == 0 and set(work) == {0}


@pytest.mark.parametrize("local_rank, local_size, visible, visible_list, expected", [
    (3, 8, 8, None, 3),       # mpiexec: every rank sees the machine's 8 GPUs
    (3, 8, 8, "0,1,2,3,4,5,6,7", 3),
    (0, 1, 4, None, 0),       # one rank on a machine of 4
    (5, 8, 1, "5", 0),        # srun --gpus-per-task=1: each rank sees its own GPU only
])
def test_local_gpu_for_each_launcher(local_rank, local_size, visible, visible_list, expected):
    assert local_gpu(local_rank, local_size, visible, visible_list) == expected


@pytest.mark.parametrize("visible, visible_list, words", [
    (2, "0,1", "sees only 2 GPUs: start at most one rank per GPU"),
    (1, None, "all share it: set CUDA_VISIBLE_DEVICES per rank"),  # a 1-GPU machine given 4 ranks
])
def test_too_few_gpus_for_the_ranks_is_one_line(visible, visible_list, words):
    with pytest.raises(MinigptError, match=words) as err:
        local_gpu(2, 4, visible, visible_list)
    assert "\n" not in str(err.value) and str(err.value).startswith("4 ranks on this machine")


def test_too_few_gpus_stops_a_run_before_any_gpu_work(tmp_path, corpus, rank_one, capsys):
    """2 ranks on a machine with one GPU and no per-rank CUDA_VISIBLE_DEVICES: one line, nothing run."""
    from minigpt.errors import run_cli
    from minigpt.trainer import main

    with device_standin.installed(devices=1):
        with pytest.raises(SystemExit) as stop:
            run_cli(main, [str(a) for a in [*TINY, "--data", corpus, "--device", "gpu", "--max_iters", 1,
                                            "--out_dir", tmp_path / "out"]])
        assert not device_standin.ON_DEVICE
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


# -- grid limits ------------------------------------------------------------------------------------------------

MANY_ROWS = 5_000_000  # > 65535 x 64 = 4.19M rows: LayerNorm backward's chunks once overflowed gridDim.y


@pytest.mark.parametrize("grid, block, shared_mem", [
    ((2**31,), (128,), 0), ((1, 65536), (32, 8), 0), ((1, 1, 65536), (32,), 0), ((1,), (1025,), 0),
    ((1,), (32, 32, 2), 0), ((1,), (1, 1, 65), 0), ((0,), (32,), 0), ((1,), (32,), 48 * 1024 + 1)])
def test_the_stand_in_refuses_a_launch_beyond_cuda_limits(grid, block, shared_mem):
    with pytest.raises(AssertionError, match="k:"):
        device_standin.check_launch_config("k", grid, block, shared_mem)
    device_standin.check_launch_config("k", (2**31 - 1, 65535, 65535), (32, 32), 48 * 1024)  # the limits pass


def test_every_kernel_launch_stays_within_cuda_limits_at_millions_of_rows():
    """Each RawKernel wrapper at 5M rows of width 1 (no values computed: the launches are checked, not run)."""
    from minigpt import optim
    from minigpt.kernels import adamw_cuda, cross_entropy_cuda, layernorm_cuda, random_cuda, softmax_cuda

    with device_standin.installed(values=False) as cupy:
        x = cupy.ones((MANY_ROWS, 1), dtype=np.float32)
        w = cupy.ones(1, dtype=np.float32)
        _, xhat, rstd = layernorm_cuda.layernorm_forward_cuda(x, w, w, 1e-5)
        layernorm_cuda.layernorm_backward_cuda(x, xhat, rstd, w)
        scores = cupy.ones((MANY_ROWS, 1, 1, 1), dtype=np.float32)
        probs = softmax_cuda.causal_softmax_forward_cuda(scores, 1.0)
        softmax_cuda.causal_softmax_backward_cuda(scores, probs, 1.0)
        targets = cupy.zeros(MANY_ROWS, dtype=np.int64)
        _, lse = cross_entropy_cuda.cross_entropy_forward_cuda(x, targets)
        cross_entropy_cuda.cross_entropy_backward_cuda(x, targets, lse, w)
        p = x.reshape(-1)
        adamw_cuda.adamw_step_cuda(p, p, p.copy(), p.copy(), w, 1.0, MANY_ROWS,
                                   optim.AdamWScalars.at(1, 1e-3, (0.9, 0.95), 1e-8, 0.1))
        random_cuda.row_uniform_cuda(cupy.zeros(MANY_ROWS, dtype=np.int64), 0, (MANY_ROWS, 1), np.float32)
        launched = {kind for kind in device_standin.LAUNCHES if kind.startswith("kernel ")}
    assert len(launched) == 9  # every RawKernel, each checked by the stand-in


@pytest.mark.parametrize("n_rows", [1, 64, 65535 * 64, 65535 * 64 + 1, MANY_ROWS, 2**31 - 1])
def test_layernorm_row_chunks_cover_the_rows_within_the_grid(n_rows):
    from minigpt.kernels.layernorm_cuda import ROWS_PER_CHUNK, row_chunks

    rows_per_chunk, n_chunks = row_chunks(n_rows)
    assert n_chunks <= 65535 and rows_per_chunk >= ROWS_PER_CHUNK
    assert (n_chunks - 1) * rows_per_chunk < n_rows <= n_chunks * rows_per_chunk  # every row, no empty chunk


# -- out-of-range targets and ids --------------------------------------------------------------------------------


def test_the_stand_ins_cross_entropy_twin_writes_nan_for_an_out_of_range_target():
    """As the kernel does (tests/test_kernels_on_host.py runs its CUDA source): NaN loss and gradient row."""
    from minigpt.kernels import cross_entropy_cuda

    z = np.random.default_rng(0).standard_normal((5, 7))
    y = np.array([3, 7, -1, -2, 100])  # valid, V, ignored, below -1, far above V
    with device_standin.installed() as cupy:
        loss_rows, lse = cross_entropy_cuda.cross_entropy_forward_cuda(cupy.asarray(z), cupy.asarray(y))
        dz = cross_entropy_cuda.cross_entropy_backward_cuda(cupy.asarray(z), cupy.asarray(y), lse,
                                                            cupy.asarray(np.array([0.5])))
        loss_rows, dz = loss_rows.get(), dz.get()
    assert np.isfinite(loss_rows[0]) and loss_rows[2] == 0 and np.isnan(loss_rows[[1, 3, 4]]).all()
    assert np.isfinite(dz[0]).all() and (dz[2] == 0).all() and np.isnan(dz[[1, 3, 4]]).all()


def test_an_out_of_vocabulary_id_is_refused_on_the_host_before_the_device_sees_it():
    from minigpt.model import GPT, GPTConfig
    from minigpt.parallel import DataParallel

    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11)
    good = np.arange(16).reshape(2, 8) % 11
    with device_standin.installed() as cupy:
        parallel = DataParallel(GPT(config, device="gpu", seed=0))
        for idx, targets, words in [(good + (good == 3) * 8, good, "input token id 11"),
                                    (good, good - 2 * (good == 0), "target token id -2"),
                                    (good, good + (good == 10) * 989, "target token id 999")]:
            device_standin.EVENTS.clear()
            with pytest.raises(MinigptError, match=f"{words} in a batch is outside the model's vocabulary of 11"):
                parallel.forward_backward(idx, targets)
            assert device_standin.EVENTS == []  # nothing went up to the device
        ignored = good.copy()
        ignored[0, :3] = -1  # -1 targets are ignored, not refused
        loss, _ = parallel.forward_backward(good, ignored)
        assert np.isfinite(float(cupy.asnumpy(loss)))


def test_training_on_token_data_past_the_vocabulary_is_one_clear_error(tmp_path, corpus):
    """A train.bin holding an id the model's vocabulary does not have (stale or foreign data) stops the run."""
    from minigpt.data import HEADER_BYTES, load_corpus, prepare

    data = prepare(load_corpus(data=str(corpus)), "char")
    vocab = data.meta["vocab_size"]
    path = next((tmp_path / "data").rglob("train.bin"))
    tokens = np.memmap(path, dtype=data.train.dtype, mode="r+", offset=HEADER_BYTES)
    tokens[:] = vocab + 3  # every window holds it
    tokens.flush()
    del tokens
    # found when the file is opened (issue 23), before any batch: minigpt.data.check_token_file
    with pytest.raises(MinigptError, match=f"train.bin holds token id {vocab + 3}, past the vocabulary of {vocab}"):
        run_main(*TINY, "--data", corpus, "--max_iters", 1, "--out_dir", tmp_path / "out")


# -- dropout's generators ----------------------------------------------------------------------------------------


def test_a_gpu_training_step_with_dropout_makes_no_generator(tmp_path, corpus, monkeypatch):
    """Accumulation 2 x batch 4 with dropout: once a cuRAND generator per row per step (8), now none."""
    from minigpt.trainer import Trainer

    made = []
    train_step = Trainer.train_step

    def counted(self, it):
        before = device_standin.LAUNCHES["generator"]
        result = train_step(self, it)
        made.append(device_standin.LAUNCHES["generator"] - before)
        return result

    monkeypatch.setattr(Trainer, "train_step", counted)
    with device_standin.installed():
        assert run_main(*TINY, "--data", corpus, "--device", "gpu", "--max_iters", 3, "--dropout", 0.2,
                        "--gradient_accumulation_steps", 2, "--out_dir", tmp_path / "out") == 0
        assert made == [0, 0, 0]
        assert device_standin.LAUNCHES["kernel row_uniform"] > 0  # the masks came from the counter-based streams


def test_gpu_dropout_rows_are_the_same_however_the_micro_batch_is_sliced():
    """Rows 0-5 drawn as one slice, or as slices 0-1, 2-4, 5 (other ranks or workers): the same numbers."""
    from minigpt.parallel import RowRNG, Slice

    key, shapes = (1337, 7), [(6, 2, 5, 5), (6, 5, 8)]  # two draws in a row, as attention then the MLP's dropout
    with device_standin.installed():
        whole = RowRNG("gpu", key, Slice(3, 0, 6))
        parts = [RowRNG("gpu", key, Slice(3, a, b)) for a, b in ((0, 2), (2, 5), (5, 6))]
        for shape in shapes:
            one = whole.random(shape, np.float32).get()
            sliced = np.concatenate([p.random((p.counter_rows.seeds.shape[0], *shape[1:]), np.float32).get()
                                     for p in parts])
            np.testing.assert_array_equal(one, sliced)
            assert 0.0 <= one.min() and one.max() < 1.0 and abs(one.mean() - 0.5) < 0.05
        first = RowRNG("gpu", key, Slice(3, 0, 6)).random(shapes[0], np.float32).get()
        for other in (Slice(4, 0, 6), Slice(3, 1, 7)):  # another micro-batch; the next row
            assert not np.isclose(RowRNG("gpu", key, other).random(shapes[0], np.float32).get(), first).any()
        assert device_standin.LAUNCHES["generator"] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_counter_based_uniforms_look_uniform_and_independent(dtype):
    from minigpt.kernels.random_cuda import row_uniform_numpy

    u = row_uniform_numpy(np.array([1, 2, 2**63 + 5], dtype=np.uint64), 0, (3, 200_000), dtype)
    assert u.dtype == dtype and 0.0 <= u.min() and u.max() < 1.0
    for row in u:
        assert abs(row.mean() - 0.5) < 0.005 and abs(row.var() - 1 / 12) < 0.002
        assert abs(np.corrcoef(row[:-1], row[1:])[0, 1]) < 0.01  # successive numbers
    assert abs(np.corrcoef(u[0], u[1])[0, 1]) < 0.01  # neighbouring seeds
    later = row_uniform_numpy(np.array([1], dtype=np.uint64), 150_000, (1, 50_000), dtype)
    np.testing.assert_array_equal(later[0], u[0, 150_000:])  # a counter is a position in the row's stream


@needs_mpi
@pytest.mark.parametrize("visible", ["all", "own"])
def test_two_ranks_on_the_gpu_path_each_touch_only_their_own_gpu(tmp_path, corpus, visible):
    """mpiexec -n 2 train.py --device gpu (stand-in CuPy, fake NCCL, real MPI): every GPU sees one rank."""
    result = mpiexec(REPO / "tests" / "mpi_checks.py", "gpu_devices", corpus, tmp_path / "out", visible)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("own GPU only: ok") == 2  # one per rank (their lines may interleave)
