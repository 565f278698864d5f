"""Scaled, causal-masked attention softmax, forward and backward, as CuPy RawKernels.

The GPU side of `minigpt.nn.softmax` (derivation there), with the same semantics
as its NumPy twin. Scores (..., Tq, Tk) are viewed as n_rows = size / Tk rows; row r is query
i = r mod Tq, which sits at absolute position i + Tk - Tq and sees the first

    n_visible = i + Tk - Tq + 1

keys. One warp (32 threads) owns one row: each lane walks the row with stride 32
(neighbouring lanes read neighbouring floats, so loads coalesce), then the lanes
combine their partial results with warp shuffles (no shared memory, no
__syncthreads). Rows of any length work; a lane may own none of a short row.

Forward, numerically stable (the row max m makes every exponent <= 0):

    z_j = s * a_j,   m = max_{j < n_visible} z_j,   p_j = exp(z_j - m) / sum_{k < n_visible} exp(z_k - m)

and p_j = 0 exactly for the masked keys j >= n_visible. The max and the sum come
from one pass over the row (online: a running sum is rescaled by exp(m_old - m_new)
when the max grows, as in FlashAttention), the probabilities from a second.

Backward (the softmax Jacobian, derived in minigpt.nn.softmax):

    da_k = s * p_k * (dp_k - sum_j dp_j p_j),   0 for masked keys.
"""

import numpy as np

from minigpt.kernels.build_cuda import RawSource, check_float_array, raw_kernel

WARP_SIZE = 32
WARPS_PER_BLOCK = 4  # 128 threads per block: four rows per block

SOFTMAX_SOURCE = RawSource(
    code=r"""
// exp for either precision (expf for float: no silent promotion to double).
__device__ __forceinline__ float exp_of(float z) { return expf(z); }
__device__ __forceinline__ double exp_of(double z) { return exp(z); }

// Butterfly sum over the 32 lanes of a warp; every lane ends with the result.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// The (max, sum of exp(z - max)) pair of two parts of a row: the larger max wins and
// the other part's sum is rescaled to it. Every part holds key 0 (always visible), so
// no max is ever -inf.
template <typename T>
__device__ __forceinline__ void combine(T& m, T& s, T m_other, T s_other) {
    const T m_new = m > m_other ? m : m_other;
    s = s * exp_of(m - m_new) + s_other * exp_of(m_other - m_new);
    m = m_new;
}

// probs = causal softmax of scale * scores over each row of t_k; one warp per row.
// One pass over the visible keys for the statistics (online max and sum), one to write.
template <typename T>
__global__ void causal_softmax_forward(const T* scores, T* probs, T scale,
                                       int n_rows, int t_q, int t_k) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= n_rows) return;  // the whole warp leaves together, so its shuffles stay full
    const int n_visible = row % t_q + t_k - t_q + 1;  // >= 1 because t_k >= t_q
    const T* a = scores + (long long)row * t_k;
    T* p = probs + (long long)row * t_k;

    // Each lane's running max m and sum s = sum exp(z - m) over its keys, rescaled
    // when m grows: m' = max(m, z), s' = s exp(m - m') + exp(z - m'). Every lane
    // starts from key 0 with s = 0, so lanes that own no key of a short row add nothing.
    T m = scale * a[0];
    T s = T(0);
    for (int j = lane; j < n_visible; j += 32) {
        const T z = scale * a[j];
        if (z > m) {
            s = s * exp_of(m - z) + T(1);
            m = z;
        } else {
            s += exp_of(z - m);
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        const T m_other = __shfl_xor_sync(0xffffffffu, m, offset);
        const T s_other = __shfl_xor_sync(0xffffffffu, s, offset);
        combine(m, s, m_other, s_other);
    }

    for (int j = lane; j < t_k; j += 32) {
        p[j] = j < n_visible ? exp_of(scale * a[j] - m) / s : T(0);
    }
}

// dscores = scale * probs * (dprobs - rowsum(dprobs * probs)); one warp per row.
template <typename T>
__global__ void causal_softmax_backward(const T* dprobs, const T* probs, T* dscores, T scale,
                                        int n_rows, int t_q, int t_k) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= n_rows) return;
    const int n_visible = row % t_q + t_k - t_q + 1;
    const long long offset = (long long)row * t_k;
    const T* dp = dprobs + offset;
    const T* p = probs + offset;
    T* da = dscores + offset;

    T dot = T(0);  // sum_j dp_j p_j; masked keys have p_j = 0 and add nothing
    for (int j = lane; j < n_visible; j += 32) {
        dot += dp[j] * p[j];
    }
    dot = warp_sum(dot);

    for (int j = lane; j < t_k; j += 32) {
        da[j] = j < n_visible ? (dp[j] - dot) * p[j] * scale : T(0);
    }
}
""",
    name_expressions=(
        "causal_softmax_forward<float>",
        "causal_softmax_forward<double>",
        "causal_softmax_backward<float>",
        "causal_softmax_backward<double>",
    ),
)

CUDA_SOURCES = [SOFTMAX_SOURCE]


def _row_layout(x):
    """(n_rows, t_q, t_k) of scores/probs (..., Tq, Tk), checked against the kernels' limits."""
    t_q, t_k = x.shape[-2:]
    if t_q > t_k:
        raise ValueError(f"causal softmax needs Tq <= Tk (each query sees itself), got Tq={t_q}, Tk={t_k}")
    n_rows = x.size // t_k if t_k else 0
    if n_rows >= 2**31:
        raise ValueError(f"{n_rows} rows overflow the kernels' 32-bit row index")
    return n_rows, t_q, t_k


def _launch(kernel_name, dtype, n_rows, args):
    """Run one warp per row, WARPS_PER_BLOCK rows per block."""
    blocks = (n_rows + WARPS_PER_BLOCK - 1) // WARPS_PER_BLOCK
    kernel = raw_kernel(SOFTMAX_SOURCE, kernel_name, dtype)
    kernel((blocks,), (WARPS_PER_BLOCK * WARP_SIZE,), args)


def causal_softmax_forward_cuda(scores, scale):
    """Causal softmax of `scale * scores` over the last axis; scores (..., Tq, Tk), Tq <= Tk."""
    import cupy

    check_float_array(scores, "scores")
    n_rows, t_q, t_k = _row_layout(scores)
    scores = cupy.ascontiguousarray(scores)  # RawKernels see raw memory: strides are ignored
    probs = cupy.empty_like(scores)
    if n_rows:
        args = (scores, probs, scores.dtype.type(scale), np.int32(n_rows), np.int32(t_q), np.int32(t_k))
        _launch("causal_softmax_forward", scores.dtype, n_rows, args)
    return probs


def causal_softmax_backward_cuda(dprobs, probs, scale):
    """dL/dscores from dL/dprobs and the forward's probs (same shape and dtype)."""
    import cupy

    check_float_array(probs, "probs")
    if dprobs.shape != probs.shape or dprobs.dtype != probs.dtype:
        raise ValueError(f"dprobs {dprobs.shape} {dprobs.dtype} must match probs {probs.shape} {probs.dtype}")
    n_rows, t_q, t_k = _row_layout(probs)
    dprobs = cupy.ascontiguousarray(dprobs)
    probs = cupy.ascontiguousarray(probs)
    dscores = cupy.empty_like(probs)
    if n_rows:
        args = (dprobs, probs, dscores, probs.dtype.type(scale), np.int32(n_rows), np.int32(t_q), np.int32(t_k))
        _launch("causal_softmax_backward", probs.dtype, n_rows, args)
    return dscores
