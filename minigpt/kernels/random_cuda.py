"""Dropout's uniform numbers on a GPU from counter-based row streams: no random generator object at all.

Dropout keys each row's masks by (seed, iteration, micro-batch, row)
(minigpt/parallel.py's RowRNG), so they depend neither on how many ranks or
workers share a step nor on where a run resumed. On the CPU each row gets a
NumPy generator (cheap: 2 KB). On a GPU a CuPy generator is a cuRAND state per
thread, 8 x 256 x SMs of them (~13 MB and a slow curand_init skip-ahead on an
H200), so a generator per row per step would cost more than the masks. Here a
row's stream is instead a pure function of its 64-bit seed and a counter:
number n of the row seeded s is splitmix64's n-th output (Steele, Lea and
Flood 2014, with Vigna's constants)

    z = s + (n + 1) * 0x9E3779B97F4A7C15              (mod 2^64)
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    u = z ^ (z >> 31)

and its top 24 (float32) or 53 (float64) bits make a uniform in [0, 1), as
NumPy's own floats do. One kernel launch fills a slice's (rows, ...) block;
each call advances every row's counter by the row's size, so a row sees the
same numbers whichever slice holds it. Two rows' streams overlap only if their
seeds differ by a multiple of the constant that is below the numbers a step
draws (~2^32), which for seeds from SeedSequence has a chance of ~2^-32 x rows^2.
`row_uniform_numpy` is the bit-exact NumPy twin (tests/test_kernels_on_host.py
runs the CUDA source on the host against it).
"""

import numpy as np

from minigpt.kernels.build_cuda import RawSource, raw_kernel

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 4096  # a grid-stride loop covers any size
GOLDEN = 0x9E3779B97F4A7C15
MIX_1, MIX_2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
MANTISSA_BITS = {np.dtype(np.float32): 24, np.dtype(np.float64): 53}

RANDOM_SOURCE = RawSource(
    code=r"""
// Number n of the splitmix64 stream seeded by `seed`.
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long seed, unsigned long long n) {
    unsigned long long z = seed + (n + 1ULL) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// The top 24 or 53 bits as a uniform in [0, 1): exact in either precision.
__device__ __forceinline__ float to_uniform(unsigned long long bits, float) {
    return (float)(bits >> 40) * 5.9604644775390625e-08f;  // 2^-24
}
__device__ __forceinline__ double to_uniform(unsigned long long bits, double) {
    return (double)(bits >> 11) * 1.1102230246251565e-16;  // 2^-53
}

// out[r][j] = uniform number (counter + j) of row r's stream (seeds[r], bits of a uint64); rows of row_size.
template <typename T>
__global__ void row_uniform(const long long* seeds, T* out, long long counter, long long row_size, int n_rows) {
    const long long n = (long long)n_rows * row_size;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / row_size;
        const unsigned long long bits = splitmix64((unsigned long long)seeds[row],
                                                   (unsigned long long)(counter + (i - row * row_size)));
        out[i] = to_uniform(bits, T(0));
    }
}
""",
    name_expressions=("row_uniform<float>", "row_uniform<double>"),
)

CUDA_SOURCES = [RANDOM_SOURCE]


def row_uniform_numpy(seeds, counter: int, shape, dtype):
    """The kernel's numbers over NumPy: (rows, ...) uniforms, row r from number `counter` on of seeds[r]'s stream."""
    dtype = np.dtype(dtype)
    seeds = np.asarray(seeds).astype(np.uint64)  # the bits of int64 seeds
    row_size = int(np.prod(shape[1:], dtype=np.int64))
    n = np.arange(counter + 1, counter + 1 + row_size, dtype=np.uint64)
    with np.errstate(over="ignore"):  # every product is meant modulo 2^64
        z = seeds[:, None] + n[None, :] * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX_1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX_2)
    z ^= z >> np.uint64(31)
    bits = MANTISSA_BITS[dtype]
    return ((z >> np.uint64(64 - bits)).astype(dtype) * dtype.type(2.0**-bits)).reshape(shape)


def row_uniform_cuda(seeds, counter: int, shape, dtype):
    """The same numbers on the GPU, one launch: seeds a device int64 array of the rows' seeds."""
    import cupy

    dtype = np.dtype(dtype)
    out = cupy.empty(shape, dtype=dtype)
    row_size = int(np.prod(shape[1:], dtype=np.int64))
    n = shape[0] * row_size
    if n:
        blocks = min((n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK, MAX_BLOCKS)
        args = (seeds, out, np.int64(counter), np.int64(row_size), np.int32(shape[0]))
        raw_kernel(RANDOM_SOURCE, "row_uniform", dtype)((blocks,), (THREADS_PER_BLOCK,), args)
    return out


class CounterRows:
    """Row streams keyed by 64-bit seeds, without a generator: `random(shape, dtype)` as dropout calls it."""

    def __init__(self, seeds, xp):
        self.xp = xp
        self.seeds = xp.asarray(np.asarray(seeds, dtype=np.uint64).view(np.int64))  # one small copy up per slice
        self.counter = 0  # numbers each row has drawn so far

    def random(self, shape, dtype):
        if shape[0] != self.seeds.shape[0]:
            raise ValueError(f"dropout masks for {self.seeds.shape[0]} rows, asked for shape {shape}")
        draw = row_uniform_numpy if self.xp is np else row_uniform_cuda
        out = draw(self.seeds, self.counter, shape, dtype)
        self.counter += int(np.prod(shape[1:], dtype=np.int64))
        return out
