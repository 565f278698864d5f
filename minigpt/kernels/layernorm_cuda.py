"""LayerNorm forward and backward as CuPy RawKernels: one warp per row, the parameter gradients in row chunks.

The GPU side of `minigpt.nn.layernorm` (derivation there), the same formulas in
the same order as its NumPy twin. For a row x of C features:

    mu = sum(x) / C,   xhat = x - mu,   var = sum(xhat^2) / C,   rstd = 1 / sqrt(var + eps)
    xhat *= rstd,      y = xhat * w + b

The forward writes y, xhat and rstd (the backward's cache, as the twin keeps).
One warp owns a row: each lane walks it with stride 32 (coalesced), the lanes
combine their sums with shuffles. The row is read three times (sum, squared
deviations, output), from L1/L2 after the first.

Backward, per row, with g = dy * w:

    dx = (g - sum(g)/C - xhat * sum(g * xhat)/C) * rstd

and for the parameters, sums over all rows: dw = sum dy * xhat, db = sum dy.
Those are column sums, so a second kernel gives each block 32 columns and a
chunk of rows (8 row-lanes of 32 threads, partials summed in shared memory) and
writes partial sums (n_chunks, 2, C); one CuPy sum over the chunks finishes
them. No atomics: the result is the same every run. The chunks are the grid's
y axis, which CUDA caps at 65535: a chunk is ROWS_PER_CHUNK rows, or more when
n_rows needs it (above 65535 x 64 = 4.19M rows, e.g. B x T of a small model's
large batch).

Grid limits of every launch here: the row kernels' gridDim.x is
ceil(n_rows / 4) < 2^29 (n_rows < 2^31, checked), within CUDA's 2^31 - 1;
the parameter kernel's gridDim.x is ceil(C / 32), its gridDim.y at most 65535.
"""

import numpy as np

from minigpt.kernels.build_cuda import RawSource, check_float_array, raw_kernel

WARP_SIZE = 32
WARPS_PER_BLOCK = 4  # rows per block in the row kernels
ROW_LANES = 8  # threadIdx.y of the parameter-gradient kernel: 8 x 32 threads per block
ROWS_PER_CHUNK = 64  # rows summed by one block of the parameter-gradient kernel (more when n_rows needs it)
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y (and .z)

LAYERNORM_SOURCE = RawSource(
    code=r"""
// 1 / sqrt for either precision (no silent promotion of float to double).
__device__ __forceinline__ float rsqrt_of(float x) { return 1.0f / sqrtf(x); }
__device__ __forceinline__ double rsqrt_of(double x) { return 1.0 / sqrt(x); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// y = (x - mean) * rstd * w + b per row of c; also writes xhat and rstd. One warp per row.
template <typename T>
__global__ void layernorm_forward(const T* x, const T* weight, const T* bias, T* y, T* xhat, T* rstd,
                                  T eps, int has_bias, int n_rows, int c) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= n_rows) return;  // the whole warp leaves together
    const long long offset = (long long)row * c;
    const T* xr = x + offset;
    const T inv_c = T(1) / T(c);

    T sum = T(0);
    for (int j = lane; j < c; j += 32) sum += xr[j];
    const T mu = warp_sum(sum) * inv_c;

    T sq = T(0);
    for (int j = lane; j < c; j += 32) {
        const T d = xr[j] - mu;
        sq += d * d;
    }
    const T r = rsqrt_of(warp_sum(sq) * inv_c + eps);

    for (int j = lane; j < c; j += 32) {
        const T h = (xr[j] - mu) * r;
        xhat[offset + j] = h;
        y[offset + j] = has_bias ? h * weight[j] + bias[j] : h * weight[j];
    }
    if (lane == 0) rstd[row] = r;
}

// dx = (g - mean(g) - xhat * mean(g * xhat)) * rstd, g = dy * w. One warp per row.
template <typename T>
__global__ void layernorm_backward_dx(const T* dy, const T* xhat, const T* rstd, const T* weight, T* dx,
                                      int n_rows, int c) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= n_rows) return;
    const long long offset = (long long)row * c;
    const T inv_c = T(1) / T(c);

    T sum_g = T(0), sum_gx = T(0);
    for (int j = lane; j < c; j += 32) {
        const T g = dy[offset + j] * weight[j];
        sum_g += g;
        sum_gx += g * xhat[offset + j];
    }
    const T mean_g = warp_sum(sum_g) * inv_c;
    const T mean_gx = warp_sum(sum_gx) * inv_c;
    const T r = rstd[row];

    for (int j = lane; j < c; j += 32) {
        const T g = dy[offset + j] * weight[j];
        dx[offset + j] = (g - mean_g - xhat[offset + j] * mean_gx) * r;
    }
}

// partial[chunk][0][col] = sum dy * xhat, partial[chunk][1][col] = sum dy over the chunk's rows.
// Block (32, ROW_LANES): threadIdx.x a column of the block's 32, threadIdx.y a row lane.
template <typename T>
__global__ void layernorm_backward_params(const T* dy, const T* xhat, T* partial,
                                          int n_rows, int c, int rows_per_chunk) {
    extern __shared__ unsigned char shared_bytes[];
    T* shared = reinterpret_cast<T*>(shared_bytes);  // [2][blockDim.y][32]
    const int col = blockIdx.x * 32 + threadIdx.x;
    const int first = blockIdx.y * rows_per_chunk;
    const int last = min(first + rows_per_chunk, n_rows);

    T dw = T(0), db = T(0);
    if (col < c) {
        for (int row = first + threadIdx.y; row < last; row += blockDim.y) {
            const long long i = (long long)row * c + col;
            dw += dy[i] * xhat[i];
            db += dy[i];
        }
    }
    const int lanes = blockDim.y;
    shared[threadIdx.y * 32 + threadIdx.x] = dw;
    shared[(lanes + threadIdx.y) * 32 + threadIdx.x] = db;
    __syncthreads();
    if (threadIdx.y == 0 && col < c) {
        for (int k = 1; k < lanes; ++k) {
            dw += shared[k * 32 + threadIdx.x];
            db += shared[(lanes + k) * 32 + threadIdx.x];
        }
        partial[((long long)blockIdx.y * 2) * c + col] = dw;
        partial[((long long)blockIdx.y * 2 + 1) * c + col] = db;
    }
}
""",
    name_expressions=(
        "layernorm_forward<float>",
        "layernorm_forward<double>",
        "layernorm_backward_dx<float>",
        "layernorm_backward_dx<double>",
        "layernorm_backward_params<float>",
        "layernorm_backward_params<double>",
    ),
)

CUDA_SOURCES = [LAYERNORM_SOURCE]


def _rows(x):
    c = x.shape[-1]
    n_rows = x.size // c if c else 0
    if n_rows >= 2**31 or c >= 2**31:
        raise ValueError(f"{n_rows} rows of {c} overflow the kernels' 32-bit indices")
    return n_rows, c


def _row_blocks(n_rows):
    return ((n_rows + WARPS_PER_BLOCK - 1) // WARPS_PER_BLOCK,), (WARPS_PER_BLOCK * WARP_SIZE,)


def row_chunks(n_rows: int) -> tuple[int, int]:
    """(rows_per_chunk, n_chunks) of the parameter-gradient kernel: n_chunks, its gridDim.y, within 65535."""
    rows_per_chunk = max(ROWS_PER_CHUNK, -(-n_rows // MAX_GRID_Y))
    return rows_per_chunk, max(-(-n_rows // rows_per_chunk), 1)


def layernorm_forward_cuda(x, weight, bias, eps):
    """y, xhat (both shaped like x) and rstd (..., 1) for x (..., C), weight/bias (C,) (bias may be None)."""
    import cupy

    check_float_array(x, "x")
    x = cupy.ascontiguousarray(x)  # RawKernels see raw memory: strides are ignored
    weight = cupy.ascontiguousarray(weight)
    has_bias = bias is not None
    bias = cupy.ascontiguousarray(bias) if has_bias else weight  # never read without a bias
    n_rows, c = _rows(x)
    y, xhat = cupy.empty_like(x), cupy.empty_like(x)
    rstd = cupy.empty((*x.shape[:-1], 1), dtype=x.dtype)
    if n_rows:
        t = x.dtype.type
        args = (x, weight, bias, y, xhat, rstd, t(eps), np.int32(has_bias), np.int32(n_rows), np.int32(c))
        raw_kernel(LAYERNORM_SOURCE, "layernorm_forward", x.dtype)(*_row_blocks(n_rows), args)
    return y, xhat, rstd


def layernorm_backward_cuda(dy, xhat, rstd, weight):
    """dx (shaped like xhat), dw (C,) and db (C,) from dy and the forward's xhat, rstd."""
    import cupy

    check_float_array(xhat, "xhat")
    if dy.shape != xhat.shape or dy.dtype != xhat.dtype:
        raise ValueError(f"dy {dy.shape} {dy.dtype} must match xhat {xhat.shape} {xhat.dtype}")
    dy = cupy.ascontiguousarray(dy)
    n_rows, c = _rows(xhat)
    dx = cupy.empty_like(xhat)
    rows_per_chunk, n_chunks = row_chunks(n_rows)
    allocate = cupy.empty if n_rows else cupy.zeros  # no rows: the sums are 0
    partial = allocate((n_chunks, 2, c), dtype=xhat.dtype)
    if n_rows:
        args = (dy, xhat, rstd, cupy.ascontiguousarray(weight), dx, np.int32(n_rows), np.int32(c))
        raw_kernel(LAYERNORM_SOURCE, "layernorm_backward_dx", xhat.dtype)(*_row_blocks(n_rows), args)
        grid = ((c + WARP_SIZE - 1) // WARP_SIZE, n_chunks)
        shared_mem = 2 * ROW_LANES * WARP_SIZE * xhat.dtype.itemsize
        args = (dy, xhat, partial, np.int32(n_rows), np.int32(c), np.int32(rows_per_chunk))
        raw_kernel(LAYERNORM_SOURCE, "layernorm_backward_params", xhat.dtype)(
            grid, (WARP_SIZE, ROW_LANES), args, shared_mem=shared_mem)
    sums = partial.sum(axis=0)  # (2, C): dw, db
    return dx, sums[0], sums[1]
