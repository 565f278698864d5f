"""The whole GPU code path of a training step, computed on the CPU, equals the CPU path.

Under tests/device_standin.py the model takes every CuPy branch: the
head-major attention and its cuBLAS calls (into the stand-in's column-major
emulation of cuBLAS), the LayerNorm, causal-softmax and cross-entropy
kernels (their CUDA source built for the host by tests/cuda_host.py), GELU's
ElementwiseKernels (their NumPy twins) and FlatAdamW's one-launch step (the
NumPy twin of the kernel, fed the kernel's own launch arguments). In float64
the loss, every gradient and the updated parameters must equal the NumPy
path's: this checks the wiring of the GPU branches (caches, shapes, dtypes,
scalars) that kernel-by-kernel tests cannot.
"""

import numpy as np
import pytest

from minigpt import optim
from minigpt.backend import scalar, to_host
from minigpt.kernels import cross_entropy_cuda, layernorm_cuda, softmax_cuda
from minigpt.model import GPT, GPTConfig
from minigpt.fast import attention
from tests import cuda_host, device_standin


@pytest.fixture(scope="module")
def host_builds(tmp_path_factory):
    builds = {}
    for module, source in ((layernorm_cuda, layernorm_cuda.LAYERNORM_SOURCE),
                           (cross_entropy_cuda, cross_entropy_cuda.CROSS_ENTROPY_SOURCE),
                           (softmax_cuda, softmax_cuda.SOFTMAX_SOURCE)):
        built = cuda_host.build(source, tmp_path_factory.mktemp(module.__name__.rsplit(".", 1)[-1]))
        if built is None:
            pytest.skip("no C++ compiler (c++ or g++) on the PATH")
        builds[module] = built
    return builds


def one_step(xp, config, tokens, params):
    model = GPT(config, dtype="float64", device="cpu" if xp is np else "gpu", seed=0).train()
    for name, value in params.items():
        model.params[name][...] = xp.asarray(value)
    optimizer = optim.FlatAdamW(model.params, lr=1e-2)
    targets = tokens[:, 1:].copy()
    targets[0, :3] = -1  # some ignored positions
    idx, targets = xp.asarray(tokens[:, :-1].copy()), xp.asarray(targets)
    _, loss = model.forward(idx, targets)
    grads = model.backward()
    grads = {name: np.array(to_host(g)) for name, g in grads.items()}
    optimizer.step({name: xp.asarray(g) for name, g in grads.items()}, grad_clip=0.05)  # clipping active
    after = {name: np.array(to_host(p)) for name, p in model.params.items()}
    return scalar(loss), grads, after


def test_a_training_step_on_the_gpu_path_equals_the_cpu_path(host_builds, monkeypatch):
    monkeypatch.setattr(attention, "QUERY_BLOCK", 4)  # three query blocks at T = 10
    config = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=10, vocab_size=17)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (3, config.block_size + 1))
    params = {name: np.array(p) for name, p in GPT(config, dtype="float64", seed=1).params.items()}
    cpu_loss, cpu_grads, cpu_after = one_step(np, config, tokens, params)

    with device_standin.installed() as cupy:  # cuBLAS emulated, GELU and AdamW by their twins
        launches = []
        for module, built in host_builds.items():
            monkeypatch.setattr(module, "raw_kernel", cuda_host.host_launcher(*built, launches))
        gpu_loss, gpu_grads, gpu_after = one_step(cupy, config, tokens, params)
        launched = {name for name, *_ in launches} | set(device_standin.LAUNCHES)

    assert {"layernorm_forward", "layernorm_backward_params", "causal_softmax_forward", "cross_entropy_backward",
            "kernel minigpt_gelu_backward", "kernel adamw_flat_step", "gemm"} <= launched  # the GPU branches ran
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-12)
    assert list(gpu_grads) == list(cpu_grads)
    for name, g in cpu_grads.items():
        np.testing.assert_allclose(gpu_grads[name], g, rtol=1e-10, atol=1e-12, err_msg=name)
    for name, p in cpu_after.items():
        np.testing.assert_allclose(gpu_after[name], p, rtol=1e-10, atol=1e-12, err_msg=name)
