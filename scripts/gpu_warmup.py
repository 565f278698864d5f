"""Compile every CUDA kernel minigpt uses, so later runs start warm: NVRTC's cold compiles, timed one by one.

    python scripts/gpu_warmup.py

CuPy compiles each kernel the first time it runs (NVRTC) and keeps the binary
in its on-disk cache (~/.cupy/kernel_cache), which every later process reuses.
On a bare machine the first run therefore pays for dozens of compiles: minigpt's
own kernels (minigpt/kernels, float32 and float64) and CuPy's element-wise and
reduction kernels that a training step uses. This script pays for them up front
and prints the seconds each took: gpu_check.sh runs it before the GPU tests so
that their time limit holds tests, not compiles. Then it runs one training step
of a tiny model in each precision, with dropout (CuPy's own kernels).
"""

import importlib
import pkgutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import minigpt.kernels  # noqa: E402
from minigpt.backend import get_xp  # noqa: E402
from minigpt.errors import run_cli  # noqa: E402
from minigpt.kernels.build_cuda import CTYPES, ElementwiseSource, elementwise_kernel, raw_kernel  # noqa: E402
from minigpt.model import GPT, GPTConfig  # noqa: E402
from minigpt.optim import FlatAdamW  # noqa: E402
from minigpt.parallel import DataParallel  # noqa: E402

DTYPES = [np.dtype(name) for name in CTYPES]


def compile_source(cupy, source) -> str:
    """Build every instantiation of one CUDA source; returns its label."""
    if isinstance(source, ElementwiseSource):
        for dtype in DTYPES:  # an ElementwiseKernel compiles per dtype at its first call
            inputs = [cupy.zeros(1, dtype=dtype) for _ in source.in_params.split(",")]
            elementwise_kernel(source)(*inputs)
        return source.name
    for expression in source.name_expressions:  # a RawModule compiles once, at its first function
        name, ctype = expression[:-1].split("<")
        raw_kernel(source, name, np.dtype({c: d for d, c in CTYPES.items()}[ctype]))
    return ", ".join(sorted({e.split("<")[0] for e in source.name_expressions}))


def one_step(dtype: str) -> None:
    """A training step (forward, backward, clipped AdamW) of a tiny model on the GPU, dropout on."""
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64, dropout=0.1)
    model = GPT(config, dtype=dtype, device="gpu", seed=0)
    optimizer = FlatAdamW(model.params, 1e-3, (0.9, 0.95), weight_decay=0.1)
    idx = np.random.default_rng(0).integers(0, 64, (2, 16))
    _, grads = DataParallel(model).forward_backward(idx, idx, dropout_key=(0, 0))
    optimizer.step(grads, grad_clip=1.0)


def main(argv=None) -> int:
    cupy = get_xp("gpu")  # one clear line if there is no usable GPU
    start = time.perf_counter()
    for info in pkgutil.iter_modules(minigpt.kernels.__path__):
        module = importlib.import_module(f"minigpt.kernels.{info.name}")
        for source in getattr(module, "CUDA_SOURCES", []):
            t0 = time.perf_counter()
            label = compile_source(cupy, source)
            print(f"compiled {info.name}: {label} in {time.perf_counter() - t0:.1f}s", flush=True)
    for dtype in ("float32", "float64"):
        t0 = time.perf_counter()
        one_step(dtype)
        cupy.cuda.Device().synchronize()
        print(f"one training step in {dtype} (CuPy's own kernels) in {time.perf_counter() - t0:.1f}s", flush=True)
    print(f"warm-up done in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
