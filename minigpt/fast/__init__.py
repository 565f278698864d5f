"""The fast versions of the layers of minigpt.nn, and the table that picks them for the model.

minigpt.nn holds each layer as a learner reads it: the derivation and the
formula, on any array module. This package holds what the model runs instead,
one module per layer, each function naming the plain function it must equal
(tests/test_fast.py pins every pair equal in float64):

* attention.py: causal blocks of query rows (keys after a block never scored),
  the GPU's head-major layout with one cuBLAS call per product, and the KV-cache
  step of inference (`forward_cached`; block.py composes it into a block's).
* gelu.py, softmax.py, layernorm.py, cross_entropy.py: NumPy twins that work in
  place and sum rows with BLAS, and the dispatch of CuPy arrays to the CUDA
  kernels of minigpt.kernels; cross_entropy's in-place pair for the training loss.
* rmsnorm.py, gelu_erf.py, swiglu.py (the variants): the same formulas in place
  or with BLAS row sums, one xp code for both devices.

LAYERS is the one table: minigpt.nn.layers.LAYERS with these swapped in. The
model runs it by default; GPT(config, fast=False) runs the plain layers instead.
"""

from minigpt.fast import attention, cross_entropy, gelu, gelu_erf, layernorm, rmsnorm, softmax, swiglu
from minigpt.nn.layers import LAYERS as PLAIN_LAYERS

__all__ = ["LAYERS", "attention", "cross_entropy", "gelu", "gelu_erf", "layernorm", "rmsnorm", "softmax", "swiglu"]

LAYERS = {
    **PLAIN_LAYERS,
    "attention": attention,
    "layernorm": layernorm,
    "rmsnorm": rmsnorm,
    "gelu_tanh": gelu,
    "gelu": gelu_erf,
    "swiglu": swiglu,
    "cross_entropy": cross_entropy,
    "cross_entropy_in_place": cross_entropy.IN_PLACE,
}
