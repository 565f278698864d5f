"""GPT-2's layers, one per module, each a pair of pure functions.

    out, cache = forward(inputs..., params...)
    dx, grads  = backward(dout, cache)        # grads: dict of parameter gradients ({} if none)

`backward` never changes its cache. Each module's docstring gives its forward
formula and derives the gradient its backward computes; README.md beside this
file is a guided tour of them in reading order, and scripts/gradcheck.py checks
each against central differences.

Every function works on NumPy and CuPy arrays alike (see minigpt.backend); gelu
and softmax hand CuPy arrays to their CUDA twins in minigpt.kernels.
"""
