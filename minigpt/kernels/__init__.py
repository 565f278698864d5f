"""CUDA twins of the hot NumPy code in minigpt.fast, and their loading.

`gelu_cuda`, `softmax_cuda`, `layernorm_cuda` and `cross_entropy_cuda` hold the
kernels of minigpt.fast.gelu, .softmax, .layernorm and .cross_entropy (the math
and its derivation live in minigpt.nn, the NumPy twins in minigpt.fast); those
fast layers call them for CuPy arrays. `adamw_cuda` is the one-launch twin of
the flat AdamW step in minigpt.optim; `random_cuda` draws dropout's uniforms from
counter-based row streams (no cuRAND generator per row). `build_cuda` turns the
CUDA sources into CuPy kernels on first use. Nothing here imports minigpt.nn or
CuPy at module level.
"""
