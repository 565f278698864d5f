"""The warp/block CUDA kernels, run on the CPU from their own source (tests/cuda_host.py), against the NumPy twins.

No GPU: each CUDA thread is a host thread, shuffles and __syncthreads are
barriers. The kernel modules' Python wrappers run unchanged (a NumPy stand-in
for cupy), so the launch geometry and arguments are checked with the kernels'
indexing, masks and reductions. float64, to a tolerance of rounding: the
reductions add in another order than NumPy does.
"""

import sys

import numpy as np
import pytest

from minigpt.kernels import cross_entropy_cuda, layernorm_cuda, softmax_cuda
from minigpt.fast import cross_entropy, layernorm, softmax
from tests import cuda_host

TOL = dict(rtol=1e-12, atol=1e-13)


def on_host(module, source, tmp_path_factory):
    built = cuda_host.build(source, tmp_path_factory.mktemp(module.__name__.rsplit(".", 1)[-1]))
    if built is None:
        pytest.skip("no C++ compiler (c++ or g++) on the PATH")
    return built


@pytest.fixture(scope="module")
def layernorm_host(tmp_path_factory):
    return on_host(layernorm_cuda, layernorm_cuda.LAYERNORM_SOURCE, tmp_path_factory)


@pytest.fixture(scope="module")
def cross_entropy_host(tmp_path_factory):
    return on_host(cross_entropy_cuda, cross_entropy_cuda.CROSS_ENTROPY_SOURCE, tmp_path_factory)


@pytest.fixture(scope="module")
def softmax_host(tmp_path_factory):
    return on_host(softmax_cuda, softmax_cuda.SOFTMAX_SOURCE, tmp_path_factory)


@pytest.fixture
def kernels_on_host(monkeypatch):
    """Route a kernel module's launches to a host build: use(module, built) -> the list of launches."""
    monkeypatch.setitem(sys.modules, "cupy", cuda_host.fake_cupy())

    def use(module, built):
        launches = []
        monkeypatch.setattr(module, "raw_kernel", cuda_host.host_launcher(*built, launches))
        return launches

    return use


@pytest.mark.parametrize("shape", [(1, 1), (5, 33), (2, 3, 100), (70, 40)])  # rows not a multiple of 4; C vs 32
@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm_kernels_equal_the_twin(layernorm_host, kernels_on_host, shape, with_bias):
    launches = kernels_on_host(layernorm_cuda, layernorm_host)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(shape)
    w, b = rng.standard_normal(shape[-1]), (rng.standard_normal(shape[-1]) if with_bias else None)
    y_twin, (xhat_twin, rstd_twin, _, _) = layernorm.forward(x, w, b)
    dx_twin, grads_twin = layernorm.backward(dy, (xhat_twin, rstd_twin, w, with_bias))

    y, xhat, rstd = layernorm_cuda.layernorm_forward_cuda(x, w, b, layernorm.EPS)
    dx, dw, db = layernorm_cuda.layernorm_backward_cuda(dy, xhat, rstd, w)
    np.testing.assert_allclose(y, y_twin, **TOL)
    np.testing.assert_allclose(xhat, xhat_twin, **TOL)
    np.testing.assert_allclose(rstd, rstd_twin, **TOL)
    np.testing.assert_allclose(dx, dx_twin, **TOL)
    np.testing.assert_allclose(dw, grads_twin["weight"], **TOL)
    if with_bias:
        np.testing.assert_allclose(db, grads_twin["bias"], **TOL)
    assert [name for name, *_ in launches] == ["layernorm_forward", "layernorm_backward_dx",
                                               "layernorm_backward_params"]


def test_layernorm_parameter_gradients_sum_over_several_row_chunks(layernorm_host, kernels_on_host, monkeypatch):
    monkeypatch.setattr(layernorm_cuda, "ROWS_PER_CHUNK", 8)  # 70 rows: 9 chunks, the last one short
    kernels_on_host(layernorm_cuda, layernorm_host)
    rng = np.random.default_rng(1)
    x, dy, w = rng.standard_normal((70, 40)), rng.standard_normal((70, 40)), rng.standard_normal(40)
    _, xhat, rstd = layernorm_cuda.layernorm_forward_cuda(x, w, None, layernorm.EPS)
    _, dw, db = layernorm_cuda.layernorm_backward_cuda(dy, xhat, rstd, w)
    np.testing.assert_allclose(dw, (dy * xhat).sum(axis=0), **TOL)
    np.testing.assert_allclose(db, dy.sum(axis=0), **TOL)


@pytest.mark.parametrize("n_rows, vocab", [(1, 1), (3, 7), (4, 300), (2, 1000)])
def test_cross_entropy_kernels_equal_the_twin(cross_entropy_host, kernels_on_host, n_rows, vocab):
    kernels_on_host(cross_entropy_cuda, cross_entropy_host)
    rng = np.random.default_rng(2)
    z = rng.standard_normal((n_rows, vocab)) * 4
    y = rng.integers(0, vocab, n_rows)
    y[1::3] = -1  # some rows ignored
    loss_twin, cache = cross_entropy.forward(z, y)
    dz_twin, _ = cross_entropy.backward(0.7, cache)

    loss_rows, lse = cross_entropy_cuda.cross_entropy_forward_cuda(z, y)
    valid = y != -1
    np.testing.assert_allclose(loss_rows.sum() / valid.sum(), loss_twin, **TOL)
    assert np.all(loss_rows[~valid] == 0.0)
    coef = np.array([0.7 / valid.sum()])
    dz = cross_entropy_cuda.cross_entropy_backward_cuda(z, y, lse, coef)
    np.testing.assert_allclose(dz, dz_twin, **TOL)
    assert np.all(dz[~valid] == 0.0)


def test_cross_entropy_kernel_survives_minus_infinite_logits(cross_entropy_host, kernels_on_host):
    """-inf logits (masked tokens) add nothing; a row whose first entries are -inf still gets a finite loss."""
    kernels_on_host(cross_entropy_cuda, cross_entropy_host)
    z = np.random.default_rng(3).standard_normal((2, 600))
    z[:, :300] = -np.inf
    y = np.array([400, 599])
    loss_rows, lse = cross_entropy_cuda.cross_entropy_forward_cuda(z, y)
    expected_lse = np.log(np.exp(z[:, 300:]).sum(axis=1))
    np.testing.assert_allclose(lse, expected_lse, **TOL)
    np.testing.assert_allclose(loss_rows, expected_lse - z[[0, 1], y], **TOL)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 2, 5, 5), (2, 3, 31, 31), (1, 1, 33, 33), (2, 2, 7, 40),
                                   (1, 3, 1, 77)])
def test_online_causal_softmax_kernels_equal_the_twin(softmax_host, kernels_on_host, shape):
    kernels_on_host(softmax_cuda, softmax_host)
    rng = np.random.default_rng(4)
    scores, dprobs = rng.standard_normal(shape) * 3, rng.standard_normal(shape)
    scale = 0.125
    probs = softmax_cuda.causal_softmax_forward_cuda(scores, scale)
    probs_twin = softmax.forward_numpy(scores, scale)
    np.testing.assert_allclose(probs, probs_twin, **TOL)
    assert np.all(probs[..., softmax.causal_mask(np, *shape[-2:])] == 0.0)
    dscores = softmax_cuda.causal_softmax_backward_cuda(dprobs, probs, scale)
    np.testing.assert_allclose(dscores, softmax.backward_numpy(dprobs, probs_twin, scale), **TOL)


def test_online_softmax_with_a_growing_row_max(softmax_host, kernels_on_host):
    """Increasing scores make every lane's max grow at each key: the rescaling path, many times over."""
    kernels_on_host(softmax_cuda, softmax_host)
    scores = np.tile(np.linspace(-50, 50, 100), (100, 1))[None, None]  # (1, 1, 100, 100)
    np.testing.assert_allclose(softmax_cuda.causal_softmax_forward_cuda(scores, 1.0),
                               softmax.forward_numpy(scores, 1.0), **TOL)


def test_layernorm_parameter_gradients_with_chunks_grown_to_fit_the_grid(layernorm_host, kernels_on_host,
                                                                         monkeypatch):
    """A grid capped at 4 chunks: 70 rows in chunks of 18 (what 4.19M+ rows meet against gridDim.y <= 65535)."""
    monkeypatch.setattr(layernorm_cuda, "ROWS_PER_CHUNK", 8)
    monkeypatch.setattr(layernorm_cuda, "MAX_GRID_Y", 4)
    launches = kernels_on_host(layernorm_cuda, layernorm_host)
    rng = np.random.default_rng(6)
    x, dy, w = rng.standard_normal((70, 40)), rng.standard_normal((70, 40)), rng.standard_normal(40)
    _, xhat, rstd = layernorm_cuda.layernorm_forward_cuda(x, w, None, layernorm.EPS)
    _, dw, db = layernorm_cuda.layernorm_backward_cuda(dy, xhat, rstd, w)
    assert launches[-1][1] == (2, 4)  # 40 columns in 2 blocks of 32, 4 chunks of 18 rows
    np.testing.assert_allclose(dw, (dy * xhat).sum(axis=0), **TOL)
    np.testing.assert_allclose(db, dy.sum(axis=0), **TOL)


def test_cross_entropy_kernels_write_nan_for_a_target_outside_the_vocabulary(cross_entropy_host, kernels_on_host):
    """y = V, y = V + 50 or y < -1: a NaN loss and a NaN row of dlogits, no read past the row; -1 stays ignored."""
    kernels_on_host(cross_entropy_cuda, cross_entropy_host)
    z = np.random.default_rng(5).standard_normal((6, 40))
    y = np.array([3, 40, -1, 90, -7, 39])
    loss_rows, lse = cross_entropy_cuda.cross_entropy_forward_cuda(z, y)
    dz = cross_entropy_cuda.cross_entropy_backward_cuda(z, y, lse, np.array([0.25]))
    bad, good = [1, 3, 4], [0, 5]
    assert np.isnan(loss_rows[bad]).all() and np.isnan(dz[bad]).all()
    assert loss_rows[2] == 0 and (dz[2] == 0).all()
    loss_twin, cache = cross_entropy.forward(z[good], y[good])
    np.testing.assert_allclose(loss_rows[good].mean(), loss_twin, **TOL)
    np.testing.assert_allclose(dz[good], cross_entropy.backward(0.25 * 2, cache)[0], **TOL)  # coef = dloss / 2 rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_counter_based_row_uniforms_equal_the_twin_bit_for_bit(tmp_path_factory, kernels_on_host, dtype):
    """Dropout's GPU streams (minigpt.kernels.random_cuda): the CUDA source's numbers are the NumPy twin's."""
    from minigpt.kernels import random_cuda

    built = on_host(random_cuda, random_cuda.RANDOM_SOURCE, tmp_path_factory)
    launches = kernels_on_host(random_cuda, built)
    seeds = np.array([3, 2**63 + 11, 12345678901234567], dtype=np.uint64).view(np.int64)
    out = random_cuda.row_uniform_cuda(seeds, 77, (3, 5, 7), dtype)
    np.testing.assert_array_equal(out, random_cuda.row_uniform_numpy(seeds, 77, (3, 5, 7), dtype))
    assert launches[0][1] == (1, 1)  # 105 numbers: one block of the grid-stride loop
