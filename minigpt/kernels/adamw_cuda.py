"""One AdamW step with gradient clipping over a flat buffer, as one CuPy RawKernel launch.

The GPU side of `minigpt.optim.adamw_step`: the same formulas, evaluated in the
same order, one element per thread in a grid-stride loop. Each thread reads
g, m, v, p once and writes m, v, p once (7 memory passes' worth of traffic in
one launch, where CuPy ufuncs would take about 15 launches, each streaming its
operands through memory). The clipping factor is computed by every thread from
the squared norm on the device, so the norm never visits the host:

    coef = min(max_norm / (sqrt(sumsq) + 1e-6), 1)   (1 when max_norm <= 0)
"""

import numpy as np

from minigpt.kernels.build_cuda import RawSource, check_float_array, raw_kernel

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 4096  # the grid-stride loop covers any size; 1M threads keep every SM of an H100 busy

ADAMW_SOURCE = RawSource(
    code=r"""
// sqrt for either precision (sqrtf for float: no silent promotion to double).
__device__ __forceinline__ float sqrt_of(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_of(double x) { return sqrt(x); }

template <typename T>
__global__ void adamw_flat_step(T* p, T* m, T* v, const T* g, const T* sumsq,
                                T max_norm, T one_minus_b1, T one_minus_b2, T decay_factor,
                                T step_size, T inv_sqrt_bias2, T eps,
                                long long decay_end, long long n) {
    T coef = T(1);
    if (max_norm > T(0)) {
        const T c = max_norm / (sqrt_of(sumsq[0]) + T(1e-6));
        coef = c < T(1) ? c : T(1);
    }
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const T gi = g[i] * coef;
        const T mi = m[i] + (gi - m[i]) * one_minus_b1;
        const T vi = v[i] + (gi * gi - v[i]) * one_minus_b2;
        const T pi = i < decay_end ? p[i] * decay_factor : p[i];
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - mi / (sqrt_of(vi) * inv_sqrt_bias2 + eps) * step_size;
    }
}
""",
    name_expressions=("adamw_flat_step<float>", "adamw_flat_step<double>"),
)

CUDA_SOURCES = [ADAMW_SOURCE]


def adamw_step_cuda(p, g, m, v, sumsq, max_norm, decay_end, s) -> None:
    """The update in place on 1-D contiguous CuPy arrays p, m, v of one dtype (s: adamw.AdamWScalars)."""
    check_float_array(p, "p")
    for name, x in (("p", p), ("g", g), ("m", m), ("v", v)):
        if x.dtype != p.dtype or x.shape != p.shape or not x.flags.c_contiguous:
            raise ValueError(f"{name} must be a contiguous {p.dtype} array of shape {p.shape}, got {x.dtype} {x.shape}")
    n = p.size
    if n == 0:
        return
    t = p.dtype.type  # scalars in the buffers' precision: a Python float would be passed as double
    args = (p, m, v, g, sumsq, t(max_norm), t(s.one_minus_b1), t(s.one_minus_b2), t(s.decay_factor),
            t(s.step_size), t(s.inv_sqrt_bias2), t(s.eps), np.int64(decay_end), np.int64(n))
    blocks = min((n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK, MAX_BLOCKS)
    raw_kernel(ADAMW_SOURCE, "adamw_flat_step", p.dtype)((blocks,), (THREADS_PER_BLOCK,), args)
