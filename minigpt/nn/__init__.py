"""GPT-2's layers, one per module, each a pair of pure functions.

    out, cache = forward(inputs..., params...)
    dx, grads  = backward(dout, cache)        # grads: dict of parameter gradients

Every function works on NumPy and CuPy arrays alike (see minigpt.backend). The
docstring of each `backward` derives the gradient it computes.
"""
