"""The optimizer, written by hand: AdamW, gradient clipping and nanoGPT's learning-rate schedule.

AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"), with
PyTorch's `torch.optim.AdamW` semantics. At step t, for a parameter p with
gradient g:

    m = b1 * m + (1 - b1) * g                    first moment (running mean of g)
    v = b2 * v + (1 - b2) * g^2                  second moment (running mean of g^2)
    p = p * (1 - lr * wd)                        decoupled weight decay
    p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

The factors 1 / (1 - b^t) undo the bias of m and v towards their zero start.
As in GPT-2/nanoGPT, weight decay applies only to 2-D tensors (the matmul
weights and the embeddings), never to biases or LayerNorm parameters.

Arrays may be NumPy or CuPy: every update is done in place on the parameter's
own array (the model's layers hold references to them), with no host sync.
"""

import math

import numpy as np

from minigpt.backend import array_module, to_device, to_host
from minigpt.errors import MinigptError


class AdamW:
    """AdamW over a dict of parameter arrays, updated in place by `step(grads)`."""

    def __init__(self, params: dict, lr: float = 6e-4, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1):
        b1, b2 = betas
        if not lr >= 0 or not 0 <= b1 < 1 or not 0 <= b2 < 1 or not eps >= 0 or not weight_decay >= 0:
            raise MinigptError(
                f"AdamW needs lr >= 0, 0 <= beta1, beta2 < 1, eps >= 0 and weight_decay >= 0; "
                f"got lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}"
            )
        self.params = params
        self.lr = lr
        self.betas = (float(b1), float(b2))
        self.eps = eps
        self.weight_decay = weight_decay
        self.t = 0  # steps taken
        self.m = {name: array_module(p).zeros_like(p) for name, p in params.items()}
        self.v = {name: array_module(p).zeros_like(p) for name, p in params.items()}
        self._buffer = None  # scratch space for step(), made on first use

    @staticmethod
    def decays(param) -> bool:
        """Weight decay for 2-D tensors (matmul weights, embeddings) only."""
        return param.ndim >= 2

    def step(self, grads: dict, lr: float | None = None) -> None:
        """One AdamW update of every parameter from `grads` (a dict keyed like params).

        Each update is written as in-place passes through one scratch buffer, so a
        step allocates nothing; the moments use the lerp form m += (1 - b1) (g - m).
        """
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        self.t += 1
        step_size = lr / (1 - b1**self.t)
        inv_sqrt_bias2 = 1.0 / math.sqrt(1 - b2**self.t)
        for name, p in self.params.items():
            g, m, v = grads[name], self.m[name], self.v[name]
            xp = array_module(p)
            tmp = self._scratch(xp, p)
            xp.subtract(g, m, out=tmp)  # m = b1 m + (1 - b1) g
            tmp *= 1 - b1
            m += tmp
            xp.multiply(g, g, out=tmp)  # v = b2 v + (1 - b2) g^2
            tmp -= v
            tmp *= 1 - b2
            v += tmp
            if self.weight_decay and self.decays(p):
                p *= 1 - lr * self.weight_decay
            xp.sqrt(v, out=tmp)  # sqrt(v) / sqrt(1 - b2^t) + eps
            tmp *= inv_sqrt_bias2
            tmp += self.eps
            xp.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp

    def _scratch(self, xp, p):
        """A reusable buffer shaped like p, carved from one array as large as the largest parameter."""
        if self._buffer is None or self._buffer.dtype != p.dtype or array_module(self._buffer) is not xp:
            self._buffer = xp.empty(max(int(q.size) for q in self.params.values()), dtype=p.dtype)
        return self._buffer[: p.size].reshape(p.shape)

    def state_dict(self) -> tuple[dict, dict]:
        """(tensors, metadata): host arrays `m.<name>` and `v.<name>`, and the step count and hyper-parameters.

        The split matches safetensors (a flat dict of arrays plus a dict of strings).
        """
        tensors = {}
        for name in self.params:
            tensors[f"m.{name}"] = to_host(self.m[name])
            tensors[f"v.{name}"] = to_host(self.v[name])
        metadata = {"step": str(self.t), "betas": f"[{self.betas[0]}, {self.betas[1]}]", "eps": str(self.eps)}
        return tensors, metadata

    def load_state_dict(self, tensors: dict, metadata: dict) -> None:
        """Restore the moments and step count saved by `state_dict` (onto the params' device)."""
        for name, p in self.params.items():
            for kind, store in (("m", self.m), ("v", self.v)):
                key = f"{kind}.{name}"
                if key not in tensors or tuple(tensors[key].shape) != tuple(p.shape):
                    raise MinigptError(f"the optimizer state has no {key} of shape {tuple(p.shape)}; it belongs to another model")
                device = "cpu" if array_module(p) is np else "gpu"
                store[name][...] = to_device(tensors[key], device, p.dtype)
        self.t = int(metadata["step"])


def clip_grad_norm(grads: dict, max_norm: float):
    """Scale all gradients in place so their global L2 norm is at most `max_norm`; return the norm before.

        total_norm = sqrt(sum over tensors of sum(g^2))
        g = g * min(1, max_norm / (total_norm + 1e-6))

    The norm stays a 0-d array of the gradients' backend (no host sync); read it
    with `backend.scalar` when it is logged.
    """
    arrays = list(grads.values())
    xp = array_module(arrays[0])
    total_norm = xp.sqrt(sum(xp.vdot(g.ravel(), g.ravel()) for g in arrays))
    coef = xp.minimum(max_norm / (total_norm + 1e-6), 1.0).astype(arrays[0].dtype)
    for g in arrays:
        g *= coef
    return total_norm


def cosine_lr(it: int, learning_rate: float, min_lr: float, warmup_iters: int, lr_decay_iters: int) -> float:
    """nanoGPT's schedule: linear warmup, then cosine decay from learning_rate to min_lr.

        it < warmup_iters:          lr = learning_rate * (it + 1) / (warmup_iters + 1)
        it > lr_decay_iters:        lr = min_lr
        otherwise, with r = (it - warmup_iters) / (lr_decay_iters - warmup_iters):
                                    lr = min_lr + (learning_rate - min_lr) * (1 + cos(pi * r)) / 2
    """
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(lr_decay_iters - warmup_iters, 1)
    return min_lr + (learning_rate - min_lr) * 0.5 * (1.0 + math.cos(math.pi * ratio))
