"""The GPU attention's products without a GPU: backend.batched_matmul's cuBLAS call, and the head-major path.

* The arguments of the one cublasGemmStridedBatchedEx call (m, n, k, leading
  dimensions, batch strides, transpose flags) are fed to a NumPy emulation of
  cuBLAS that reads raw memory column-major, as cuBLAS does (it lives in
  tests/device_standin.py, whose cuBLAS runs it): it must give
  op(a) @ op(b) for the strided slices attention passes (query blocks, key
  prefixes, outputs written into a slice). Reading row-major data as
  column-major is the classic trap; this is where it would show.
* attention.forward_heads_major (what CuPy runs) equals the NumPy blocks of fast.attention.forward (what
  NumPy runs), forward and backward, dropout included, on NumPy.
"""

import numpy as np
import pytest

from minigpt.backend import batched_matmul, get_xp, gpu_available, tf32_enabled
from minigpt.fast import attention
from minigpt.kernels.cublas import CUBLAS_OP_T, gemm_strided_batched_args
from tests import device_standin
from tests.device_standin import emulate_gemm_strided_batched, emulating_gemm_strided_batched_ex


def flat(x, base):
    """(base's flat buffer, offset of x's first element in it)."""
    return base.reshape(-1), (x.ctypes.data - base.ctypes.data) // x.itemsize


def run_emulated(a, a_base, b, b_base, out, out_base, transpose_a, transpose_b, accumulate):
    g = gemm_strided_batched_args(a, b, out, transpose_a, transpose_b)
    # cuBLAS's first operand is b's memory, its second a's (out^T = op(b)^T op(a)^T)
    emulate_gemm_strided_batched(g, 1.0, flat(b, b_base), 1.0 if accumulate else 0.0, flat(a, a_base),
                                 flat(out, out_base))
    return g


B, H, T, D = 2, 3, 11, 4
QUERIES = slice(4, 9)  # a block of query rows s:e
KEYS = slice(0, 9)  # the keys 0:e it sees


def heads(seed):
    """A contiguous (B, H, T, D) array, as the head-major q, k, v, dq, dk, dv are."""
    return np.random.default_rng(seed).standard_normal((B, H, T, D))


@pytest.mark.parametrize("accumulate", [False, True])
def test_cublas_arguments_compute_each_attention_product(accumulate):
    """The four product shapes of forward_heads_major/backward_heads_major, on their real strided slices."""
    q, k, v, dy = heads(0), heads(1), heads(2), heads(3)
    s, e = QUERIES.start, QUERIES.stop
    scores = np.random.default_rng(4).standard_normal((B, H, e - s, e))  # p, dp, da: contiguous, new each block
    cases = [  # (a, a_base, b, b_base, transpose_a, transpose_b, expected of op(a) @ op(b))
        (q[:, :, QUERIES], q, k[:, :, KEYS], k, False, True, q[:, :, QUERIES] @ k[:, :, KEYS].swapaxes(-1, -2)),
        (scores, scores, v[:, :, KEYS], v, False, False, scores @ v[:, :, KEYS]),
        (scores, scores, dy[:, :, QUERIES], dy, True, False, scores.swapaxes(-1, -2) @ dy[:, :, QUERIES]),
        (scores, scores, q[:, :, QUERIES], q, True, False, scores.swapaxes(-1, -2) @ q[:, :, QUERIES]),
    ]
    for a, a_base, b, b_base, transpose_a, transpose_b, expected in cases:
        out_base = heads(5) if expected.shape[-1] == D else np.random.default_rng(5).standard_normal(expected.shape)
        rows = slice(0, expected.shape[-2]) if expected.shape[-1] == D else slice(None)
        out = out_base[:, :, rows]  # written into a slice of a larger array, as y_heads, dk, dv are
        before = out.copy()
        g = run_emulated(a, a_base, b, b_base, out, out_base, transpose_a, transpose_b, accumulate)
        np.testing.assert_allclose(out, expected + (before if accumulate else 0.0), rtol=1e-12, atol=1e-12)
        assert g.batch == B * H
        assert (g.transa == CUBLAS_OP_T) == transpose_b and (g.transb == CUBLAS_OP_T) == transpose_a


def test_cublas_arguments_with_a_row_stride_wider_than_the_row():
    """q as a view of qkv (B=1): rows D wide, D*3H apart, heads D apart: lda != k."""
    qkv = np.random.default_rng(6).standard_normal((1, T, 3 * H * D))
    q, k, _ = attention.split_heads(qkv, H)  # (1, H, T, D) views with row stride 3HD
    out_base = np.zeros((1, H, T, T))
    g = run_emulated(q, qkv, k, qkv, out_base, out_base, False, True, False)
    assert g.lda == g.ldb == 3 * H * D and g.stride_a == g.stride_b == D
    np.testing.assert_allclose(out_base, q @ k.swapaxes(-1, -2), rtol=1e-12, atol=1e-12)


def test_operands_whose_heads_do_not_fold_into_one_stride_are_refused():
    """q of a (B>1, T, 3C) qkv: batch strides T*3C and D; one cuBLAS call cannot walk both."""
    qkv = np.zeros((2, T, 3 * H * D))
    q, k, _ = attention.split_heads(qkv, H)
    with pytest.raises(ValueError, match="do not fold"):
        gemm_strided_batched_args(q, k, np.zeros((2, H, T, T)), transpose_b=True)
    with pytest.raises(ValueError, match="unit stride"):
        gemm_strided_batched_args(q.swapaxes(-1, -2), k, np.zeros((2, H, D, D)))
    with pytest.raises(ValueError, match="do not match"):
        gemm_strided_batched_args(heads(0), heads(1), np.zeros((B, H, T, T)))


def test_batched_matmul_on_numpy_is_the_product_of_the_transposed_views():
    a, b = heads(7), heads(8)
    np.testing.assert_allclose(batched_matmul(a, b, transpose_b=True), a @ b.swapaxes(-1, -2))
    out = np.ones((B, H, D, D))
    batched_matmul(a, b, transpose_a=True, out=out, accumulate=True)
    np.testing.assert_allclose(out, 1.0 + a.swapaxes(-1, -2) @ b)


@pytest.mark.parametrize("attn_pdrop", [0.0, 0.2])
@pytest.mark.parametrize("query_block", [3, 128])
def test_heads_major_attention_equals_the_blocked_attention(attn_pdrop, query_block, monkeypatch):
    """The GPU's layout, run on NumPy, gives fast.attention.forward's output and gradients (same dropout masks)."""
    monkeypatch.setattr(attention, "QUERY_BLOCK", query_block)
    rng = np.random.default_rng(9)
    Bx, Tx, C, n_head = 2, 7, 8, 2
    x, dout = rng.standard_normal((Bx, Tx, C)), rng.standard_normal((Bx, Tx, C))
    params = (rng.standard_normal((C, 3 * C)), rng.standard_normal(3 * C), rng.standard_normal((C, C)),
              rng.standard_normal(C))
    out, cache = attention.forward(x, *params, n_head, attn_pdrop, np.random.default_rng(1), True)
    dx, grads = attention.backward(dout, cache)
    out_hm, cache = attention.forward_heads_major(x, *params, n_head, attn_pdrop, np.random.default_rng(1), True)
    dx_hm, grads_hm = attention.backward_heads_major(dout, cache)
    np.testing.assert_allclose(out_hm, out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx_hm, dx, rtol=1e-12, atol=1e-12)
    assert list(grads_hm) == list(grads)
    for name, g in grads.items():
        np.testing.assert_allclose(grads_hm[name], g, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_cublas_batched_matmul_on_the_gpu_equals_numpy(dtype, accumulate):
    """The real cuBLAS call on the four attention products' strided slices, against NumPy in float64."""
    cupy = get_xp("gpu")
    q, k, v, dy = (heads(seed).astype(dtype) for seed in range(4))
    s, e = QUERIES.start, QUERIES.stop
    p = np.random.default_rng(4).standard_normal((B, H, e - s, e)).astype(dtype)
    # TF32 rounds inputs to 10 mantissa bits (~5e-4 each); K <= 11 terms here
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else (
        dict(rtol=5e-3, atol=5e-3) if tf32_enabled() else dict(rtol=1e-5, atol=1e-5))
    host = dict(q=q, k=k, v=v, dy=dy, p=p)
    device = {name: cupy.asarray(x) for name, x in host.items()}  # whole arrays; sliced on the device below
    cases = [  # (operands of the named arrays, transpose_a, transpose_b)
        (lambda x: (x["q"][:, :, QUERIES], x["k"][:, :, KEYS]), False, True),
        (lambda x: (x["p"], x["v"][:, :, KEYS]), False, False),
        (lambda x: (x["p"], x["dy"][:, :, QUERIES]), True, False),
        (lambda x: (x["p"], x["q"][:, :, QUERIES]), True, False),
    ]
    for operands, transpose_a, transpose_b in cases:
        a, b = operands(host)
        expected = batched_matmul(a.astype(np.float64), b.astype(np.float64), transpose_a, transpose_b)
        n = expected.shape[-2]
        base = np.random.default_rng(5).standard_normal((B, H, T, expected.shape[-1])).astype(dtype)
        out = cupy.asarray(base)
        a, b = operands(device)  # strided views of device arrays, as attention passes them
        got = batched_matmul(a, b, transpose_a, transpose_b, out=out[:, :, :n], accumulate=accumulate)
        want = expected + (base[:, :, :n] if accumulate else 0.0)
        np.testing.assert_allclose(got.get(), want, **tol)
        np.testing.assert_array_equal(out.get()[:, :, n:], base[:, :, n:])  # rows past the slice untouched


@pytest.mark.parametrize("dtype, tf32", [("float32", True), ("float32", False), ("float64", True)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_the_cublas_call_end_to_end_on_the_cpu(dtype, tf32, accumulate, monkeypatch):
    """backend.batched_matmul's CuPy branch, the real call with pointers, scalars and types, into an emulated cuBLAS."""
    from minigpt.kernels.cublas import (CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_COMPUTE_64F,
                                        CUBLAS_GEMM_DEFAULT, CUDA_R_32F, CUDA_R_64F)

    monkeypatch.setenv("CUPY_TF32", "1" if tf32 else "0")
    calls = []
    with device_standin.installed() as cupy:
        cupy.cuda.cublas.gemmStridedBatchedEx = emulating_gemm_strided_batched_ex(calls)
        q, k, v, dy = (cupy.asarray(heads(seed).astype(dtype)) for seed in range(4))
        s, e = QUERIES.start, QUERIES.stop
        p = cupy.asarray(np.random.default_rng(4).standard_normal((B, H, e - s, e)).astype(dtype))
        cases = [(q[:, :, QUERIES], k[:, :, KEYS], False, True), (p, v[:, :, KEYS], False, False),
                 (p, dy[:, :, QUERIES], True, False), (p, q[:, :, QUERIES], True, False)]
        for a, b, transpose_a, transpose_b in cases:
            a_host, b_host = device_standin.host_memory(a), device_standin.host_memory(b)
            expected = batched_matmul(a_host, b_host, transpose_a, transpose_b)
            base = np.random.default_rng(5).standard_normal((B, H, T, expected.shape[-1])).astype(dtype)
            out = cupy.asarray(base.copy())
            n = expected.shape[-2]
            batched_matmul(a, b, transpose_a, transpose_b, out=out[:, :, :n], accumulate=accumulate)
            got = device_standin.host_memory(out)
            np.testing.assert_allclose(got[:, :, :n], expected + (base[:, :, :n] if accumulate else 0.0),
                                       rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-5 if dtype == "float32" else 1e-12)
            np.testing.assert_array_equal(got[:, :, n:], base[:, :, n:])
            fresh = batched_matmul(a, b, transpose_a, transpose_b)  # no out: a new array
            np.testing.assert_allclose(device_standin.host_memory(fresh), expected, rtol=1e-5 if dtype == "float32" else 1e-12)
    data_type = CUDA_R_32F if dtype == "float32" else CUDA_R_64F
    compute = {("float32", True): CUBLAS_COMPUTE_32F_FAST_TF32, ("float32", False): CUBLAS_COMPUTE_32F}.get(
        (dtype, tf32), CUBLAS_COMPUTE_64F)
    assert calls and all(call == (data_type, compute, CUBLAS_GEMM_DEFAULT) for call in calls)
