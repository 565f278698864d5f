"""Run a RawSource's CUDA kernels on the CPU: each CUDA thread a host thread, warps and blocks kept in step.

The kernel text is the very source CuPy compiles, built with the host C++
compiler against a small prelude:

* a block runs as blockDim.x * blockDim.y std::threads, one block after another;
  threadIdx/blockIdx are thread-local, blockDim/gridDim global;
* `__shfl_xor_sync` writes the lane's value to a slot, waits for the warp
  (a barrier of its 32 threads), reads the partner lane's slot, waits again;
* `__syncthreads` is a barrier of the whole block; `__shared__` arrays are
  statics (blocks run one at a time, so one copy serves each block);
* exp/log/sqrt come from <cmath>, built with -ffp-contract=off (no fused
  multiply-adds), so results differ from a GPU's by rounding only.

`host_launcher(library)` stands in for build_cuda.raw_kernel: the kernel
modules' Python wrappers run unchanged over NumPy arrays (with `fake_cupy` as
their `cupy`), and their launches go to the host build. It checks indexing,
masking, the reductions and the launch arguments; not speed, not the GPU's
memory model.
"""

import ctypes
import shutil
import subprocess
import types

import numpy as np

from minigpt.kernels.build_cuda import CTYPES
from tests.device_standin import check_launch, check_launch_config, host_memory, kernel_parameters

PRELUDE = r"""
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>
using std::min;
using std::max;
using std::exp;
using std::log;
using std::sqrt;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

struct Dim3 { unsigned x, y, z; };
static thread_local Dim3 threadIdx, blockIdx;
static thread_local unsigned linear_id;
static Dim3 blockDim, gridDim;
alignas(16) unsigned char shared_bytes[1 << 16];  // the launch's dynamic shared memory

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, sizeof f); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, sizeof d); return d; }

class Barrier {
  public:
    explicit Barrier(unsigned n) : n_(n) {}
    void wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        const unsigned generation = generation_;
        if (++count_ == n_) {
            count_ = 0;
            ++generation_;
            cv_.notify_all();
        } else {
            cv_.wait(lock, [&] { return generation != generation_; });
        }
    }
  private:
    std::mutex mutex_;
    std::condition_variable cv_;
    unsigned n_, count_ = 0, generation_ = 0;
};

static std::vector<Barrier*> warp_barriers;
static Barrier* block_barrier = nullptr;
static double shuffle_slots[1024];

template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    const unsigned warp = linear_id / 32, lane = linear_id % 32;
    shuffle_slots[linear_id] = (double)v;  // float and double both survive the trip exactly
    warp_barriers[warp]->wait();
    const T other = (T)shuffle_slots[warp * 32 + (lane ^ lane_mask)];
    warp_barriers[warp]->wait();
    return other;
}

inline void __syncthreads() { block_barrier->wait(); }

template <typename F>
void launch(Dim3 grid, Dim3 block, F body) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y;
    for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            Barrier whole_block(n);
            block_barrier = &whole_block;
            std::vector<Barrier*> warps;
            for (unsigned w = 0; w * 32 < n; ++w) warps.push_back(new Barrier(std::min(32u, n - w * 32)));
            warp_barriers = warps;
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < n; ++t) {
                threads.emplace_back([=] {
                    threadIdx = Dim3{t % block.x, t / block.x, 0};
                    blockIdx = Dim3{bx, by, 0};
                    linear_id = t;
                    body();
                });
            }
            for (auto& thread : threads) thread.join();
            for (auto* w : warps) delete w;
        }
    }
}
"""

_C_TYPES = {"int": ctypes.c_int, "long long": ctypes.c_longlong}


def build(source, tmp_path):
    """The source's kernels compiled for the host; returns (library, {expression: parameters})."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return None
    code = source.code.replace("extern __shared__", "extern")  # the prelude's global buffer
    wrappers, signatures = [], {}
    for expression in source.name_expressions:
        name, ctype = expression[:-1].split("<")
        params = kernel_parameters(source.code, name)
        signatures[expression] = params
        decls = ", ".join(f"{t.replace('T', ctype)} {n}" for t, n in params)
        names = ", ".join(n for _, n in params)
        wrappers.append(f'extern "C" void run_{name}_{ctype}(unsigned gx, unsigned gy, unsigned bx, unsigned by, '
                        f'{decls}) {{ launch(Dim3{{gx, gy, 1}}, Dim3{{bx, by, 1}}, '
                        f'[=] {{ {name}<{ctype}>({names}); }}); }}')
    path = tmp_path / "kernels_host.cpp"
    path.write_text(PRELUDE + code + "\n" + "\n".join(wrappers) + "\n")
    library = path.with_suffix(".so")
    result = subprocess.run([compiler, "-std=c++17", "-O1", "-ffp-contract=off", "-pthread", "-shared", "-fPIC",
                             "-o", str(library), str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"host build failed:\n{result.stderr}")
    return ctypes.CDLL(str(library)), signatures


def host_launcher(library, signatures, launches=None):
    """A stand-in for build_cuda.raw_kernel whose kernels run on the host build."""

    def raw_kernel(source, kernel_name, dtype):
        ctype = CTYPES[dtype.name]
        params = signatures[f"{kernel_name}<{ctype}>"]
        scalar = ctypes.c_float if ctype == "float" else ctypes.c_double

        def kernel(grid, block, args, shared_mem=0):
            args = [host_memory(a) for a in args]  # the stand-in's device arrays, or NumPy arrays (fake_cupy)
            check_launch(kernel_name, params, args, dtype)
            check_launch_config(kernel_name, grid, block, shared_mem)
            c_args = []
            for (ptype, _), arg in zip(params, args):
                if ptype.endswith("*"):
                    c_args.append(arg.ctypes.data_as(ctypes.c_void_p))
                elif ptype == "T":
                    c_args.append(scalar(arg))
                else:
                    c_args.append(_C_TYPES[ptype](int(arg)))
            grid = (*grid, 1)[:2] if len(grid) < 2 else grid
            block = (*block, 1)[:2] if len(block) < 2 else block
            if launches is not None:
                launches.append((kernel_name, tuple(grid), tuple(block), shared_mem))
            getattr(library, f"run_{kernel_name}_{ctype}")(*map(ctypes.c_uint, (*grid, *block)), *c_args)

        return kernel

    return raw_kernel


def fake_cupy():
    """The few cupy functions the kernel wrappers call, over NumPy (host arrays stand in for device ones)."""
    module = types.ModuleType("cupy")
    for name in ("ascontiguousarray", "empty", "empty_like", "zeros", "int64", "float32", "float64"):
        setattr(module, name, getattr(np, name))
    return module
