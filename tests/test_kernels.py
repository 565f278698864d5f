"""The CUDA twins of minigpt.fast.gelu and minigpt.fast.softmax, against their NumPy twins.

Three layers of checks:

* CPU, always: the layers send NumPy input to their NumPy twins (those are
  checked against plain formulas and finite differences in tests/test_nn.py),
  and every module imports without a cycle.
* CPU with the CUDA toolkit: every CUDA source in minigpt/kernels/ compiles
  with nvcc for sm_80 (A100) and sm_90 (H100). ElementwiseKernel bodies are
  wrapped the way CuPy wraps them, so this checks exactly the text that runs.
* GPU (CuPy and a device): every kernel equals its NumPy twin on random shapes,
  odd sizes included.
"""

import importlib
import math
import os
import pkgutil
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import minigpt.kernels
from minigpt import backend
from minigpt.backend import get_xp, gpu_available, set_tf32, tf32_enabled, to_host
from minigpt.errors import MinigptError
from minigpt.fast import cross_entropy, gelu, layernorm, softmax
from minigpt.kernels.build_cuda import CTYPES, ElementwiseSource, RawSource
from minigpt.model import GPT, GPTConfig
from minigpt.optim import AdamW, clip_grad_norm

# ---------------------------------------------------------------------------
# The layers call the CUDA kernels for CuPy arrays only, and import without cycles
# (the NumPy twins themselves are tested in tests/test_nn.py)
# ---------------------------------------------------------------------------


def test_layers_send_numpy_arrays_to_the_numpy_twins(monkeypatch):
    """gelu, softmax and cross_entropy have *_numpy twins; layernorm's twin is the NumPy code of forward/backward."""
    calls = []

    def refuse(*args):
        raise AssertionError("a CUDA kernel was called for NumPy arrays")

    from minigpt.kernels import layernorm_cuda

    monkeypatch.setattr(layernorm_cuda, "layernorm_forward_cuda", refuse)
    monkeypatch.setattr(layernorm_cuda, "layernorm_backward_cuda", refuse)

    def spy(module, twin_name):
        twin = getattr(module, twin_name)

        def wrapped(*args):
            calls.append(f"{module.__name__}.{twin_name}")
            return twin(*args)

        monkeypatch.setattr(module, twin_name, wrapped)

    spy(gelu, "forward_numpy")
    spy(gelu, "backward_numpy")
    spy(softmax, "forward_numpy")
    spy(softmax, "backward_numpy")
    spy(cross_entropy, "forward_numpy")
    spy(cross_entropy, "backward_numpy")
    x = np.random.default_rng(5).standard_normal((2, 3, 3)).astype(np.float32)

    y, gelu_cache = gelu.forward(x)
    gelu.backward(np.ones_like(x), gelu_cache)
    p, softmax_cache = softmax.forward(x, 0.5)
    softmax.backward(np.ones_like(p), softmax_cache)
    h, ln_cache = layernorm.forward(x, np.ones(3, np.float32), np.zeros(3, np.float32))
    layernorm.backward(np.ones_like(h), ln_cache)
    loss, ce_cache = cross_entropy.forward(x, np.array([[0, 1, -1], [2, 2, 0]]))
    cross_entropy.backward(1.0, ce_cache)

    assert calls == [
        "minigpt.fast.gelu.forward_numpy",
        "minigpt.fast.gelu.backward_numpy",
        "minigpt.fast.softmax.forward_numpy",
        "minigpt.fast.softmax.backward_numpy",
        "minigpt.fast.cross_entropy.forward_numpy",
        "minigpt.fast.cross_entropy.backward_numpy",
    ]
    assert isinstance(y, np.ndarray) and isinstance(p, np.ndarray)
    assert y.dtype == np.float32 and p.dtype == np.float32


def test_the_gelu_kernels_constants_are_the_layers():
    """kernels/gelu_cuda.py spells GELU's constants itself (kernels/ imports nothing from nn/): the same numbers."""
    from minigpt.kernels import gelu_cuda
    from minigpt.nn import gelu as plain_gelu

    assert gelu_cuda.SQRT_2_OVER_PI == plain_gelu.SQRT_2_OVER_PI == math.sqrt(2 / math.pi)
    assert gelu_cuda.GELU_COEFF == plain_gelu.GELU_COEFF == 0.044715
    assert repr(plain_gelu.GELU_COEFF) in gelu_cuda.GELU_PREAMBLE and repr(plain_gelu.SQRT_2_OVER_PI) in gelu_cuda.GELU_PREAMBLE


@pytest.mark.parametrize(
    "module",
    ["minigpt.kernels.gelu_cuda", "minigpt.kernels.softmax_cuda", "minigpt.kernels.layernorm_cuda",
     "minigpt.kernels.cross_entropy_cuda", "minigpt.fast.gelu", "minigpt.fast.softmax", "minigpt.fast.layernorm",
     "minigpt.fast.cross_entropy", "minigpt.fast", "minigpt.model", "minigpt.kernels.random_cuda", "minigpt.parallel"],
)
def test_imports_first_in_a_fresh_interpreter(module):
    """Whichever side of a layer/kernel pair is imported first, the import completes (no cycle)."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr


def test_kernels_package_holds_only_the_cuda_twins_and_their_loading():
    names = sorted(info.name for info in pkgutil.iter_modules(minigpt.kernels.__path__))
    assert names == ["adamw_cuda", "build_cuda", "cross_entropy_cuda", "cublas", "gelu_cuda", "layernorm_cuda",
                     "random_cuda", "softmax_cuda"]  # cublas: batched_matmul's strided-batched GEMM


# ---------------------------------------------------------------------------
# --device gpu without CuPy, or without a device: one clear error
# ---------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_gpu_without_cupy_is_a_clear_error():
    with pytest.raises(MinigptError, match=r"needs CuPy.*pip install -e '\.\[gpu\]'"):
        get_xp("gpu")
    assert gpu_available() is False


def test_gpu_without_a_device_is_a_clear_error(monkeypatch):
    """A CuPy whose CUDA runtime finds no driver: stands in for an installed CuPy on a GPU-less machine."""

    class NoDriver(RuntimeError):
        pass

    def get_device_count():
        raise NoDriver("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(MinigptError, match="no usable CUDA device.*--device cpu"):
        get_xp("gpu")


# ---------------------------------------------------------------------------
# nvcc compile check of every CUDA source (no GPU needed)
# ---------------------------------------------------------------------------

GPU_ARCHS = ("80", "90")  # A100, H100/H200

# CuPy parameter types that may appear in an ElementwiseKernel signature here.
_PARAM_CTYPES = {"T": "T", **CTYPES, "int32": "int", "int64": "long long"}


def cuda_sources():
    """(label, source) for every ElementwiseSource/RawSource listed in a module's CUDA_SOURCES."""
    found = []
    for info in pkgutil.iter_modules(minigpt.kernels.__path__):
        module = importlib.import_module(f"minigpt.kernels.{info.name}")
        for source in getattr(module, "CUDA_SOURCES", []):
            label = source.name if isinstance(source, ElementwiseSource) else source.name_expressions[0]
            found.append((f"{info.name}:{label}", source))
    return found


def _elementwise_params(params: str, is_input: bool):
    """Kernel parameters and per-element bindings for "T x, T y", as CuPy generates them."""
    declarations, bindings = [], []
    for param in filter(None, (p.strip() for p in params.split(","))):
        type_name, name = param.split()
        ctype = _PARAM_CTYPES[type_name]
        const = "const " if is_input else ""
        declarations.append(f"{const}{ctype}* _raw_{name}")
        bindings.append(f"{const}{ctype} &{name} = _raw_{name}[_i];")
    return declarations, bindings


def elementwise_translation_unit(source: ElementwiseSource) -> str:
    """The operation in a minimal grid-stride kernel, once per dtype (CuPy's `typedef ... T`)."""
    in_decls, in_binds = _elementwise_params(source.in_params, is_input=True)
    out_decls, out_binds = _elementwise_params(source.out_params, is_input=False)
    units = []
    for ctype in CTYPES.values():
        units.append(f"""
namespace check_{ctype} {{
typedef {ctype} T;
{source.preamble}
__global__ void {source.name}({", ".join(in_decls + out_decls)}, long long _n) {{
    for (long long _i = blockIdx.x * (long long)blockDim.x + threadIdx.x; _i < _n;
         _i += (long long)gridDim.x * blockDim.x) {{
        {" ".join(in_binds + out_binds)}
        {source.operation}
    }}
}}
}}  // namespace check_{ctype}
""")
    return "\n".join(units)


def raw_translation_unit(source: RawSource) -> str:
    """The module's code plus an explicit instantiation per name expression (CuPy asks NVRTC for them)."""
    instantiations = []
    for expression in source.name_expressions:
        name, ctype = expression[:-1].split("<")
        instantiations.append(f"template __global__ decltype({name}<{ctype}>) {name}<{ctype}>;")
    return source.code + "\n" + "\n".join(instantiations) + "\n"


def translation_unit(source) -> str:
    if isinstance(source, ElementwiseSource):
        return elementwise_translation_unit(source)
    return raw_translation_unit(source)


def test_every_kernel_module_declares_its_sources():
    labels = [label for label, _ in cuda_sources()]
    assert any(label.startswith("gelu_cuda:") for label in labels)
    assert any(label.startswith("softmax_cuda:") for label in labels)
    assert any(label.startswith("layernorm_cuda:") for label in labels)
    assert any(label.startswith("cross_entropy_cuda:") for label in labels)
    # CUDA lives in the *_cuda modules' CUDA_SOURCES, where this file finds it; a loose
    # .cu file would escape the nvcc check below.
    assert not list(Path(minigpt.kernels.__path__[0]).glob("*.cu"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not on the PATH")
def test_cuda_sources_compile_with_nvcc(tmp_path):
    """All sources in one nvcc call, each in its own file for clear messages.

    --fatbin compiles the device code for both architectures (through ptxas,
    so register and resource errors show too) and skips the host compiler, which
    has nothing to check here and would double the time. Warnings are errors.
    """
    files = []
    for index, (label, source) in enumerate(cuda_sources()):
        path = tmp_path / f"{index:02d}_{label.replace(':', '_').replace('<', '_').replace('>', '')}.cu"
        path.write_text(translation_unit(source))
        files.append(path)
    gencode = [f"-gencode=arch=compute_{arch},code=sm_{arch}" for arch in GPU_ARCHS]
    # With several inputs nvcc writes one output per input into --output-directory.
    command = ["nvcc", "--fatbin", "-std=c++17", "--Werror", "all-warnings", *gencode, "--output-directory", str(tmp_path)]
    result = subprocess.run([*command, *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc failed:\n{result.stdout}\n{result.stderr}"
    for path in files:
        assert path.with_suffix(".fatbin").stat().st_size > 0


# ---------------------------------------------------------------------------
# CUDA kernels against their NumPy twins (needs a GPU)
# ---------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")

TOLERANCE = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-14)}
SHAPES = [(1,), (31,), (33,), (2, 3, 5), (4, 7, 129), (2, 12, 64, 64)]
ATTENTION_SHAPES = [(1, 1, 1, 1), (1, 2, 5, 5), (2, 3, 31, 31), (1, 1, 33, 33), (2, 2, 7, 40), (1, 12, 1, 77), (1, 2, 130, 130)]


def random_pair(shape, dtype, seed):
    """The same standard-normal array on the host and on the device."""
    cupy = get_xp("gpu")
    host = (np.random.default_rng(seed).standard_normal(shape) * 3).astype(dtype)
    return host, cupy.asarray(host)


def gelu_reference(x, dout):
    """gelu(x) and dout * gelu'(x) in float64 from the same (possibly float32) inputs."""
    x, dout = x.astype(np.float64), dout.astype(np.float64)
    t = np.tanh(gelu.SQRT_2_OVER_PI * (x + gelu.GELU_COEFF * x * x * x))
    du_dx = gelu.SQRT_2_OVER_PI * (1.0 + 3.0 * gelu.GELU_COEFF * x * x)
    return 0.5 * x * (1.0 + t), dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)


def assert_close_to_gelu_reference(y, dx, x, dout):
    """Within a few ulp of the float64 reference, scaled to the size of the terms.

    For x in about [-6, -3] gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx is a
    difference of terms up to ~15 whose sum is ~0: one ulp of t (tanh differs by
    an ulp or two between CUDA and NumPy) moves dx by ~30 ulp of 1, times |dout|.
    So dx is held to 128 eps max|dout| absolute, y to 8 eps max|x|: a wrong formula
    or constant is off by far more.
    """
    eps = np.finfo(x.dtype).eps
    y_ref, dx_ref = gelu_reference(x, dout)
    np.testing.assert_allclose(y, y_ref, rtol=8 * eps, atol=8 * eps * float(np.abs(x).max()))
    np.testing.assert_allclose(dx, dx_ref, rtol=8 * eps, atol=128 * eps * float(np.abs(dout).max()))


def gelu_inputs(shape, dtype, seed):
    """x spread over [-9, 9] (the cancelling range [-6, -3] included), dout ~ N(0, 9)."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(-9, 9, shape)).astype(dtype), (rng.standard_normal(shape) * 3).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gelu_numpy_twin_is_within_the_reference_tolerance(dtype):
    """The tolerance the GPU test uses holds for the NumPy twin (and catches a wrong constant)."""
    x, dout = gelu_inputs((4096,), dtype, seed=1)
    assert_close_to_gelu_reference(gelu.forward_numpy(x), gelu.backward_numpy(dout, x), x, dout)
    wrong = gelu.backward_numpy(dout, x * np.asarray(1.001, dtype=dtype))  # 0.1% off in x: far outside
    with pytest.raises(AssertionError):
        assert_close_to_gelu_reference(gelu.forward_numpy(x), wrong, x, dout)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_gelu_cuda_matches_numpy_twin(shape, dtype):
    """Kernel and twin each against the float64 reference (not against each other: see the tolerance)."""
    cupy = get_xp("gpu")
    x_host, dout_host = gelu_inputs(shape, dtype, seed=10)
    x, dout = cupy.asarray(x_host), cupy.asarray(dout_host)
    y, _ = gelu.forward(x)
    dx, _ = gelu.backward(dout, x)
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close_to_gelu_reference(y.get(), dx.get(), x_host, dout_host)
    assert_close_to_gelu_reference(gelu.forward_numpy(x_host), gelu.backward_numpy(dout_host, x_host), x_host,
                                   dout_host)


@needs_gpu
@pytest.mark.gpu
def test_gelu_cuda_accepts_non_contiguous_views():
    x_host, x = random_pair((6, 10), "float32", seed=12)
    np.testing.assert_allclose(gelu.forward(x.T)[0].get(), gelu.forward_numpy(x_host.T), **TOLERANCE["float32"])


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
def test_causal_softmax_cuda_matches_numpy_twin(shape, dtype):
    scale = 1.0 / math.sqrt(64)
    scores_host, scores = random_pair(shape, dtype, seed=13)
    dprobs_host, dprobs = random_pair(shape, dtype, seed=14)
    probs_host = softmax.forward_numpy(scores_host, scale)

    probs, cache = softmax.forward(scores, scale)
    dscores, _ = softmax.backward(dprobs, cache)

    assert probs.dtype == dtype and dscores.dtype == dtype
    np.testing.assert_allclose(probs.get(), probs_host, **TOLERANCE[dtype])
    expected = softmax.backward_numpy(dprobs_host, probs_host, scale)
    np.testing.assert_allclose(dscores.get(), expected, **TOLERANCE[dtype])
    masked = softmax.causal_mask(np, *shape[-2:])
    assert np.all(probs.get()[..., masked] == 0.0) and np.all(dscores.get()[..., masked] == 0.0)


@needs_gpu
@pytest.mark.gpu
def test_causal_softmax_cuda_accepts_non_contiguous_scores():
    scores_host, scores = random_pair((2, 9, 9), "float32", seed=15)
    probs, _ = softmax.forward(scores.transpose(0, 2, 1), 0.25)
    expected = softmax.forward_numpy(np.ascontiguousarray(scores_host.transpose(0, 2, 1)), 0.25)
    np.testing.assert_allclose(probs.get(), expected, **TOLERANCE["float32"])


LAYERNORM_SHAPES = [(1, 1), (3, 31), (2, 5, 33), (4, 7, 768), (130, 64)]


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", LAYERNORM_SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm_cuda_matches_numpy_twin(shape, dtype, with_bias):
    x_host, x = random_pair(shape, dtype, seed=16)
    dy_host, dy = random_pair(shape, dtype, seed=17)
    w_host, w = random_pair(shape[-1:], dtype, seed=18)
    b_host, b = random_pair(shape[-1:], dtype, seed=19) if with_bias else (None, None)
    y_host, cache_host = layernorm.forward(x_host, w_host, b_host)  # NumPy arrays: the NumPy twin
    dx_host, grads_host = layernorm.backward(dy_host, cache_host)

    y, cache = layernorm.forward(x, w, b)
    dx, grads = layernorm.backward(dy, cache)
    assert y.dtype == dtype and dx.dtype == dtype and list(grads) == list(grads_host)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-11, atol=1e-12)  # sums of C terms
    np.testing.assert_allclose(y.get(), y_host, **tol)
    np.testing.assert_allclose(cache[0].get(), cache_host[0], **tol)  # xhat
    np.testing.assert_allclose(dx.get(), dx_host, **tol)
    for name, g in grads_host.items():  # sums over every row: a looser absolute floor
        np.testing.assert_allclose(grads[name].get(), g, rtol=tol["rtol"], atol=tol["atol"] * shape[0], err_msg=name)


CROSS_ENTROPY_SHAPES = [(1, 1), (3, 7), (2, 5, 257), (4, 50257)]


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", CROSS_ENTROPY_SHAPES)
def test_cross_entropy_cuda_matches_numpy_twin(shape, dtype):
    cupy = get_xp("gpu")
    logits_host, logits = random_pair(shape, dtype, seed=20)
    targets_host = np.random.default_rng(21).integers(0, shape[-1], shape[:-1])
    targets_host.reshape(-1)[::3] = -1  # every third position ignored
    targets = cupy.asarray(targets_host)
    loss_host, cache_host = cross_entropy.forward_numpy(logits_host, targets_host)
    dlogits_host, _ = cross_entropy.backward_numpy(0.5, cache_host)

    loss, cache = cross_entropy.forward(logits, targets)
    dlogits, _ = cross_entropy.backward(0.5, cache)
    assert dlogits.dtype == dtype and dlogits.shape == shape
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(float(loss.get()), float(loss_host), **tol)
    np.testing.assert_allclose(dlogits.get(), dlogits_host, **tol)


@needs_gpu
@pytest.mark.gpu
def test_cross_entropy_cuda_with_every_target_ignored_is_nan_as_the_twin():
    cupy = get_xp("gpu")
    logits = cupy.zeros((2, 3), dtype=cupy.float32)
    loss, _ = cross_entropy.forward(logits, cupy.full(2, -1))
    assert np.isnan(float(loss.get()))


# ---------------------------------------------------------------------------
# TF32 on the GPU: on by default, off on request
# ---------------------------------------------------------------------------


ORIGINAL_CUPY_TF32 = os.environ.get("CUPY_TF32")


def fake_cupy(elementwise_kernel):
    """A stand-in cupy module with one device and the given ElementwiseKernel class (over NumPy)."""
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    fake.float32 = np.float32
    fake.zeros = lambda n, dtype: FakeDeviceArray(np.zeros(n, dtype))
    fake.ElementwiseKernel = elementwise_kernel
    return fake


class FakeDeviceArray:
    def __init__(self, host):
        self.host = host

    def get(self):
        return self.host


class WorkingElementwiseKernel:
    """Compiles nothing; runs `y = x + T(1)` (the probe's body) on the host."""

    def __init__(self, in_params, out_params, operation, name, **kwargs):
        assert operation == "y = x + T(1)"

    def __call__(self, x):
        return FakeDeviceArray(x.host + 1)


@pytest.fixture
def fake_cupy_with_a_device(monkeypatch):
    """A stand-in cupy that reports one device, so get_xp("gpu") runs its setup without a GPU."""
    fake = fake_cupy(WorkingElementwiseKernel)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_PROBED", False)
    for name in ("CUPY_TF32", "MINIGPT_TF32"):
        monkeypatch.setenv(name, "")  # records the original value, so whatever a test sets is undone
        monkeypatch.delenv(name)
    return fake


class CompileError(Exception):
    """Stands in for cupy.cuda.compiler.CompileException / NVRTC's load errors."""


def nvrtc_missing(*args, **kwargs):
    raise CompileError("cannot open source file \"cuda_fp16.h\"\n(compilation log follows)")


def test_a_gpu_that_cannot_compile_kernels_is_one_clear_error(monkeypatch):
    """The driver sees a GPU, but NVRTC or the CUDA headers are missing (cupy-cuda12x without [ctk])."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(nvrtc_missing))
    monkeypatch.setattr(backend, "_PROBED", False)
    with pytest.raises(MinigptError) as raised:
        get_xp("gpu")
    message = str(raised.value)
    assert "\n" not in message
    assert "cannot compile and run a CUDA kernel (CompileError: cannot open source file" in message
    assert "cupy-cuda12x[ctk]" in message and "--device cpu" in message
    assert gpu_available() is False


def test_a_gpu_whose_probe_computes_garbage_is_one_clear_error(monkeypatch):
    class Wrong(WorkingElementwiseKernel):
        def __call__(self, x):
            return FakeDeviceArray(x.host + 2)

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(Wrong))
    monkeypatch.setattr(backend, "_PROBED", False)
    with pytest.raises(MinigptError, match=r"0 \+ 1 = 2\.0.*nvidia-smi"):
        get_xp("gpu")


def test_the_probe_runs_once_per_process(monkeypatch):
    built = []

    class Counting(WorkingElementwiseKernel):
        def __init__(self, *args, **kwargs):
            built.append(args[3])
            super().__init__(*args, **kwargs)

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(Counting))
    monkeypatch.setattr(backend, "_PROBED", False)
    get_xp("gpu")
    get_xp("gpu")
    assert built == ["minigpt_probe"]


def test_tf32_is_on_by_default_on_the_gpu(fake_cupy_with_a_device):
    assert get_xp("gpu") is fake_cupy_with_a_device
    assert os.environ["CUPY_TF32"] == "1" and tf32_enabled()


def test_tf32_off_by_environment(fake_cupy_with_a_device, monkeypatch):
    monkeypatch.setenv("MINIGPT_TF32", "0")
    get_xp("gpu")
    assert os.environ["CUPY_TF32"] == "0" and not tf32_enabled()


def test_tf32_off_by_set_tf32_before_first_use(fake_cupy_with_a_device):
    set_tf32(False)
    get_xp("gpu")
    assert not tf32_enabled()


def test_tf32_fixture_leaves_no_environment_behind():
    """Runs after the tests above: their CUPY_TF32 must not leak into the rest of the suite."""
    assert os.environ.get("CUPY_TF32") == ORIGINAL_CUPY_TF32


# ---------------------------------------------------------------------------
# scripts/bench/bench_gpu.py without a GPU
# ---------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_bench_gpu_without_cupy_is_one_clear_error():
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench" / "bench_gpu.py"
    result = subprocess.run([sys.executable, str(script), "--no-torch"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --device gpu needs CuPy") and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------
# Training on the GPU against the CPU (needs a GPU)
# ---------------------------------------------------------------------------


def short_training_run(device, params, config, batches, steps=5):
    """Losses of `steps` AdamW steps from `params` (host arrays); also the final model, optimizer, grads."""
    model = GPT(config, dtype="float32", device=device, seed=0).train()
    for name, value in params.items():
        model.params[name][...] = model.xp.asarray(value)
    optimizer = AdamW(model.params, lr=1e-2)
    losses = []
    for idx, targets in batches[:steps]:
        _, loss = model.forward(model.xp.asarray(idx), model.xp.asarray(targets))
        grads = model.backward()
        clip_grad_norm(grads, 1.0)
        optimizer.step(grads)
        losses.append(loss)  # kept on the device: one sync at the end, as the trainer does
    return [float(to_host(loss)) for loss in losses], model, optimizer, grads


@needs_gpu
@pytest.mark.gpu
def test_short_training_run_on_gpu_matches_cpu():
    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=97)
    params = {name: to_host(p) for name, p in GPT(config, device="cpu", seed=0).params.items()}
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (4, config.block_size + 1))
    batches = [(tokens[:, :-1], tokens[:, 1:])] * 5  # one batch, learnt by heart: the loss must fall

    cpu_losses, *_ = short_training_run("cpu", params, config, batches)
    gpu_losses, model, optimizer, grads = short_training_run("gpu", params, config, batches)

    # TF32 rounds matmul inputs to 10 mantissa bits (~1e-3); plain float32 agrees far closer.
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=2e-3 if tf32_enabled() else 1e-5)
    assert gpu_losses[-1] < gpu_losses[0]  # it did learn something
    cupy = get_xp("gpu")
    on_device = [*model.params.values(), *grads.values(), *optimizer.m.values(), *optimizer.v.values()]
    assert all(isinstance(a, cupy.ndarray) for a in on_device)


# ---------------------------------------------------------------------------
# RawModule.get_function once per (kernel, dtype), not once per launch
# ---------------------------------------------------------------------------


def test_raw_kernels_are_looked_up_once_per_name_and_dtype(monkeypatch):
    from minigpt.kernels import build_cuda, softmax_cuda

    calls = {"modules": 0, "get_function": []}

    class CountingRawModule:
        def __init__(self, code, name_expressions):
            calls["modules"] += 1

        def get_function(self, name):
            calls["get_function"].append(name)
            return object()

    fake = types.ModuleType("cupy")
    fake.RawModule = CountingRawModule
    monkeypatch.setitem(sys.modules, "cupy", fake)
    build_cuda._raw_module.cache_clear()
    build_cuda._raw_function.cache_clear()
    try:
        source = softmax_cuda.SOFTMAX_SOURCE
        first = build_cuda.raw_kernel(source, "causal_softmax_forward", np.dtype("float32"))
        for _ in range(5):  # five launches' worth of look-ups
            assert build_cuda.raw_kernel(source, "causal_softmax_forward", np.dtype("float32")) is first
        build_cuda.raw_kernel(source, "causal_softmax_forward", np.dtype("float64"))
        build_cuda.raw_kernel(source, "causal_softmax_backward", np.dtype("float32"))
    finally:  # the fake module's functions must not outlive this test
        build_cuda._raw_module.cache_clear()
        build_cuda._raw_function.cache_clear()
    assert calls["modules"] == 1
    assert calls["get_function"] == ["causal_softmax_forward<float>", "causal_softmax_forward<double>",
                                     "causal_softmax_backward<float>"]
