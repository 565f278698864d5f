"""Hot elementwise and row-wise operations, each as a NumPy twin and a CUDA kernel.

`gelu_forward`, `gelu_backward`, `causal_softmax_forward` and
`causal_softmax_backward` take arrays of either backend: NumPy arrays go to the
NumPy twin, CuPy arrays to the hand-written CUDA kernel beside it.
"""

from minigpt.kernels.gelu import gelu_backward, gelu_forward
from minigpt.kernels.softmax import causal_softmax_backward, causal_softmax_forward

__all__ = ["gelu_forward", "gelu_backward", "causal_softmax_forward", "causal_softmax_backward"]
