"""cuBLAS's strided-batched GEMM for row-major stacks of matrices: backend.batched_matmul's CuPy side.

CuPy's own matmul of stacks (ndim > 2) copies non-contiguous operands and runs
plain FP32; one cublasGemmStridedBatchedEx call reads strided slices in place,
takes transposes as flags, accumulates into its output, and runs float32 on
TF32 tensor cores. This module works out that call's arguments
(`gemm_strided_batched_args`, pure Python, tested on the CPU) and makes it.
Nothing here imports CuPy at module level.
"""

from typing import NamedTuple

import numpy as np

# cuBLAS constants (cublas_api.h, library_types.h), used by batched_matmul on the GPU.
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUDA_R_32F, CUDA_R_64F = 0, 1
CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_COMPUTE_64F = 68, 77, 70
CUBLAS_GEMM_DEFAULT = -1


class GemmArgs(NamedTuple):
    """The shape arguments of one cublasGemmStridedBatchedEx call (strides and leading dimensions in elements).

    cuBLAS computes, for each of `batch` matrices, C = op(X) @ op(Y) in
    column-major order: X is m x k after op, Y is k x n, C is m x n, element
    (i, j) of a column-major matrix with leading dimension ld at offset i + j * ld.
    """

    transa: int
    transb: int
    m: int
    n: int
    k: int
    lda: int
    stride_a: int
    ldb: int
    stride_b: int
    ldc: int
    stride_c: int
    batch: int


def _matrix_stack_layout(x, name):
    """(batch, row stride, batch stride) in elements of x (..., R, S): rows of unit-stride elements, one batch stride.

    The leading axes must fold into one (each stride = the next one's stride times
    its length), as a slice of query rows or keys of a (B, H, T, D) array does.
    """
    itemsize = x.dtype.itemsize
    strides = [s // itemsize for s in x.strides]
    if x.shape[-1] > 1 and strides[-1] != 1:
        raise ValueError(f"{name}: the last axis must have unit stride, got strides {x.strides}")
    row_stride = max(strides[-2], x.shape[-1]) if x.shape[-2] > 1 else x.shape[-1]
    batch = 1
    batch_stride = row_stride * x.shape[-2]
    lead = [(n, s) for n, s in zip(x.shape[:-2], strides[:-2]) if n > 1]
    for i, (n, s) in enumerate(lead):
        if i + 1 < len(lead) and s != lead[i + 1][0] * lead[i + 1][1]:
            raise ValueError(f"{name}: leading axes {x.shape[:-2]} with strides {x.strides[:-2]} do not fold "
                             f"into one batch stride")
        batch *= n
    if lead:
        batch_stride = lead[-1][1]
    return batch, row_stride, batch_stride


def gemm_strided_batched_args(a, b, out, transpose_a=False, transpose_b=False) -> GemmArgs:
    """The cuBLAS call that computes out = op(a) @ op(b) for row-major stacks (..., R, S).

    A row-major M x N matrix C with row stride ldc is, read column-major, the
    N x M matrix C^T with leading dimension ldc. So out = op(a) @ op(b) becomes

        out^T = op(b)^T @ op(a)^T        (column-major, m = N, n = M, k = K)

    with b's memory as cuBLAS's first operand and a's as its second. The memory
    of b, row-major, read column-major is b^T; cuBLAS's operand must be op(b)^T,
    which is that view itself (OP_N) when op(b) = b, and its transpose (OP_T)
    when op(b) = b^T. Likewise for a. Leading dimensions are the row strides.
    """
    M, K = a.shape[-1:-3:-1] if transpose_a else a.shape[-2:]
    K_b, N = b.shape[-1:-3:-1] if transpose_b else b.shape[-2:]
    if K != K_b or out.shape[-2:] != (M, N) or not (a.shape[:-2] == b.shape[:-2] == out.shape[:-2]):
        raise ValueError(f"batched_matmul: op(a) {a.shape} transposed={transpose_a}, op(b) {b.shape} "
                         f"transposed={transpose_b} and out {out.shape} do not match")
    batch, lda_a, stride_a = _matrix_stack_layout(a, "a")
    _, ld_b, stride_b = _matrix_stack_layout(b, "b")
    _, ldc, stride_c = _matrix_stack_layout(out, "out")
    return GemmArgs(transa=CUBLAS_OP_T if transpose_b else CUBLAS_OP_N,
                    transb=CUBLAS_OP_T if transpose_a else CUBLAS_OP_N,
                    m=N, n=M, k=K, lda=ld_b, stride_a=stride_b, ldb=lda_a, stride_b=stride_a,
                    ldc=ldc, stride_c=stride_c, batch=batch)


def gemm_strided_batched(a, b, out, transpose_a, transpose_b, accumulate, tf32):
    """out = op(a) @ op(b) (out += ... when accumulate) for CuPy stacks, in one cublasGemmStridedBatchedEx;
    float32 on TF32 tensor cores when tf32."""
    from cupy.cuda import cublas as cupy_cublas, device

    if not (a.dtype == b.dtype == out.dtype) or a.dtype.name not in ("float32", "float64"):
        raise TypeError(f"batched_matmul needs one float dtype, got {a.dtype}, {b.dtype}, {out.dtype}")
    g = gemm_strided_batched_args(a, b, out, transpose_a, transpose_b)
    if g.batch == 0 or g.m == 0 or g.n == 0:
        return
    if a.dtype == np.float32:
        data_type = CUDA_R_32F
        compute = CUBLAS_COMPUTE_32F_FAST_TF32 if tf32 else CUBLAS_COMPUTE_32F
    else:
        data_type, compute = CUDA_R_64F, CUBLAS_COMPUTE_64F
    alpha = np.ones((), dtype=a.dtype)  # host scalars (cuBLAS's default pointer mode), in the compute precision
    beta = np.array(1.0 if accumulate else 0.0, dtype=a.dtype)
    cupy_cublas.gemmStridedBatchedEx(
        device.get_cublas_handle(), g.transa, g.transb, g.m, g.n, g.k,
        alpha.ctypes.data, b.data.ptr, data_type, g.lda, g.stride_a,
        a.data.ptr, data_type, g.ldb, g.stride_b,
        beta.ctypes.data, out.data.ptr, data_type, g.ldc, g.stride_c,
        g.batch, compute, CUBLAS_GEMM_DEFAULT)
