"""Linear layer, in GPT-2's (Conv1D) layout: weight is (in, out) and y = x @ W + b.

Forward, with the leading axes flattened into N rows (one 2-D matmul, which is
also what lets CuPy use TF32 tensor cores):

    y[n, o] = sum_i x[n, i] W[i, o] + b[o]                # (N, out)

Backward, given dout = dL/dy:

    dx = dout @ W^T    dx[n, i] = sum_o dout[n, o] W[i, o]    # (N, in)
    dW = x^T @ dout    dW[i, o] = sum_n x[n, i] dout[n, o]    # (in, out)
    db = sum_n dout[n, :]                                     # (out,)

A weight wrapped by lora.py (`Frozen`, or `Adapted` with a LoRA adapter) is
handed on to that module: fine-tuning with LoRA, W and b frozen.
"""

from minigpt.backend import sum_first_axis
from minigpt.nn import lora


def forward(x, weight, bias=None):
    """x: (..., in), weight: (in, out), bias: (out,) or None -> (..., out)."""
    if isinstance(weight, lora.Frozen):  # LoRA fine-tuning: W frozen, perhaps adapted (lora.py)
        return lora.forward(x, weight, bias)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    y = x2 @ weight  # (N, out)
    if bias is not None:
        y += bias
    return y.reshape(*lead, weight.shape[1]), (x2, weight, bias is not None, lead)


def backward(dout, cache):
    """Returns dx (..., in) and {"weight": dW, "bias": db} (no "bias" when there was none)."""
    if isinstance(cache, lora.Cache):
        return lora.backward(dout, cache)
    x2, weight, has_bias, lead = cache
    dout2 = dout.reshape(-1, weight.shape[1])  # (N, out)
    dx = (dout2 @ weight.T).reshape(*lead, weight.shape[0])
    grads = {"weight": x2.T @ dout2}
    if has_bias:
        grads["bias"] = sum_first_axis(dout2)  # db = sum_n dout[n, :], as one BLAS product on NumPy
    return dx, grads
