"""GPT-2's layers as a learner reads them: one module per layer, each a pair of pure functions.

    out, cache = forward(inputs..., params...)
    dx, grads  = backward(dout, cache)        # dout = dL/dout; grads: dict of parameter gradients ({} if none)

`backward` never changes its cache. Each module's docstring gives its forward
formula and derives the gradient its backward computes, and the code is that
formula, on NumPy and CuPy arrays alike (see minigpt.backend). README.md beside
this file is a guided tour of them in reading order; scripts/gradcheck.py checks
each against central differences.

What the model runs for speed (blocked attention, in-place NumPy, CUDA kernels)
lives apart, in minigpt.fast, each function tested equal to the one here;
layers.py is the table of the plain layers, minigpt.fast.LAYERS the fast one.
"""
