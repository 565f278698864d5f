"""Softmax + cross-entropy of next-token logits, forward and backward, as CuPy RawKernels: one block per row.

The GPU side of `minigpt.nn.cross_entropy` (derivation there). For row n with
logits z (V entries) and target y (-1: ignored; any other id outside [0, V):
NaN loss and a NaN row of dlogits, never a read out of bounds; the trainer
refuses such ids on the host before they get here, minigpt.data.check_token_ids):

    forward:   m = max z,  lse = m + log sum_v exp(z_v - m),  loss_n = lse - z_y  (0 when ignored)
    backward:  dz_v = (exp(z_v - lse) - [v == y]) * coef,      coef = dloss / N_valid  (0 when ignored)

The forward reads each row once: every thread keeps a running (max, sum) over
its strided share of the row, rescaling its sum when the max grows

    m' = max(m, z),   s' = s * exp(m - m') + exp(z - m')

and the pairs combine the same way across the warp (shuffles) and the block
(shared memory). It keeps only lse per row for the backward (the NumPy twin
keeps exp(z - m), a whole (N, V) array: 1.6 GB for B=8, T=1024 at V=50257).
The backward reads the row once more and writes dlogits; coef is read from
device memory, so neither dloss nor N_valid visits the host.
"""

import numpy as np

from minigpt.kernels.build_cuda import RawSource, check_float_array, raw_kernel

THREADS_PER_BLOCK = 256  # 8 warps per row: a 50257-wide row is ~200 entries per thread

CROSS_ENTROPY_SOURCE = RawSource(
    code=r"""
__device__ __forceinline__ float exp_of(float z) { return expf(z); }
__device__ __forceinline__ double exp_of(double z) { return exp(z); }
__device__ __forceinline__ float log_of(float z) { return logf(z); }
__device__ __forceinline__ double log_of(double z) { return log(z); }
// -infinity by its bits: NVRTC, unlike nvcc, may not define INFINITY without extra headers.
template <typename T> __device__ __forceinline__ T minus_infinity();
template <> __device__ __forceinline__ float minus_infinity<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double minus_infinity<double>() {
    return -__longlong_as_double(0x7ff0000000000000LL);
}
// A quiet NaN, for a target outside [0, V) other than the ignored -1: wrong data shows, never a wrong gradient.
template <typename T> __device__ __forceinline__ T quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double quiet_nan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }

// The (max, sum of exp(z - max)) pair of two parts of a row. A part with no entries has
// max = -inf and sum = 0; two such give (-inf, 0) (the guard keeps exp(-inf - -inf) = NaN out).
template <typename T>
__device__ __forceinline__ void combine(T& m, T& s, T m_other, T s_other) {
    const T m_new = m > m_other ? m : m_other;
    if (m_new == minus_infinity<T>()) return;
    s = s * exp_of(m - m_new) + s_other * exp_of(m_other - m_new);
    m = m_new;
}

// loss_rows[n] = logsumexp(z) - z[y] (0 when y == -1, NaN when y is another id outside [0, v)),
// lse[n] = logsumexp(z). One block per row.
template <typename T>
__global__ void cross_entropy_forward(const T* logits, const long long* targets, T* loss_rows, T* lse,
                                      int n_rows, int v) {
    __shared__ T shared_m[32];
    __shared__ T shared_s[32];
    const int row = blockIdx.x;
    const T* z = logits + (long long)row * v;

    T m = minus_infinity<T>(), s = T(0);
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        const T zj = z[j];
        if (zj > m) {
            s = s * exp_of(m - zj) + T(1);  // exp(-inf) = 0 on the first finite entry
            m = zj;
        } else if (m != minus_infinity<T>()) {  // -inf entries before any finite one add nothing
            s += exp_of(zj - m);
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        const T m_other = __shfl_xor_sync(0xffffffffu, m, offset);
        const T s_other = __shfl_xor_sync(0xffffffffu, s, offset);
        combine(m, s, m_other, s_other);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
    if (lane == 0) {
        shared_m[warp] = m;
        shared_s[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < n_warps; ++w) combine(m, s, shared_m[w], shared_s[w]);
        const T row_lse = m + log_of(s);
        const long long y = targets[row];
        lse[row] = row_lse;
        loss_rows[row] = y == -1 ? T(0) : (y < 0 || y >= v) ? quiet_nan<T>() : row_lse - z[y];
    }
}

// dlogits = (softmax(z) - onehot(y)) * coef[0], 0 on ignored rows, NaN on rows whose y is outside [0, v).
// One block per row.
template <typename T>
__global__ void cross_entropy_backward(const T* logits, const long long* targets, const T* lse, const T* coef,
                                       T* dlogits, int n_rows, int v) {
    const int row = blockIdx.x;
    const long long offset = (long long)row * v;
    const long long y = targets[row];
    const T c = y == -1 ? T(0) : (y < 0 || y >= v) ? quiet_nan<T>() : coef[0];
    const T row_lse = lse[row];
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        dlogits[offset + j] = y == -1 ? T(0) : (exp_of(logits[offset + j] - row_lse) - (j == y ? T(1) : T(0))) * c;
    }
}
""",
    name_expressions=(
        "cross_entropy_forward<float>",
        "cross_entropy_forward<double>",
        "cross_entropy_backward<float>",
        "cross_entropy_backward<double>",
    ),
)

CUDA_SOURCES = [CROSS_ENTROPY_SOURCE]


def _rows(z):
    n_rows, v = z.shape
    if n_rows >= 2**31 or v >= 2**31:
        raise ValueError(f"({n_rows}, {v}) logits overflow the kernels' 32-bit indices")
    return n_rows, v


def cross_entropy_forward_cuda(z, y):
    """loss_rows (N,) (0 on ignored rows) and lse (N,) for logits z (N, V) and targets y (N,)."""
    import cupy

    check_float_array(z, "logits")
    z = cupy.ascontiguousarray(z)
    y = cupy.ascontiguousarray(y, dtype=cupy.int64)
    n_rows, v = _rows(z)
    loss_rows, lse = cupy.empty(n_rows, dtype=z.dtype), cupy.empty(n_rows, dtype=z.dtype)
    if n_rows:
        args = (z, y, loss_rows, lse, np.int32(n_rows), np.int32(v))
        raw_kernel(CROSS_ENTROPY_SOURCE, "cross_entropy_forward", z.dtype)((n_rows,), (THREADS_PER_BLOCK,), args)
    return loss_rows, lse


def cross_entropy_backward_cuda(z, y, lse, coef):
    """dlogits (N, V) = (softmax(z) - onehot(y)) * coef; coef a 1-element device array of z's dtype."""
    import cupy

    check_float_array(z, "logits")
    z = cupy.ascontiguousarray(z)
    y = cupy.ascontiguousarray(y, dtype=cupy.int64)
    n_rows, v = _rows(z)
    dz = cupy.empty_like(z)
    if n_rows:
        args = (z, y, lse, coef, dz, np.int32(n_rows), np.int32(v))
        raw_kernel(CROSS_ENTROPY_SOURCE, "cross_entropy_backward", z.dtype)((n_rows,), (THREADS_PER_BLOCK,), args)
    return dz
