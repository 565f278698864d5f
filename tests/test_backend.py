"""The backend helpers that are more than a one-line dispatch."""

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl

from minigpt.backend import blas_threads, get_xp, scatter_add, to_host


@pytest.mark.parametrize("n, repeats", [(0, 1), (1, 1), (50, 3), (200, 40)])
def test_scatter_add_accumulates_repeated_rows(device, n, repeats):
    xp = get_xp(device)
    rng = np.random.default_rng(n)
    indices = rng.integers(0, max(n // repeats, 1), n)  # many repeats when `repeats` is large
    values = rng.standard_normal((n, 5))
    target = rng.standard_normal((max(n // repeats, 1) + 2, 5))
    expected = target.copy()
    np.add.at(expected, indices, values)
    out = xp.asarray(target)
    scatter_add(xp, out, xp.asarray(indices), xp.asarray(values))
    np.testing.assert_allclose(to_host(out), expected, rtol=1e-12, atol=1e-12)


def test_blas_threads_limits_numpy_blas():
    with blas_threads(1):
        info = threadpoolctl.threadpool_info()
        assert [lib for lib in info if lib["user_api"] == "blas"]
        assert all(lib["num_threads"] == 1 for lib in info if lib["user_api"] == "blas")


def test_cupy_without_a_driver_does_not_say_install_cupy(monkeypatch):
    """CuPy installed but getDeviceCount raises (no driver): the message says the driver or GPU is missing."""
    import sys
    import types

    from minigpt.errors import MinigptError

    def get_device_count():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setenv("CUPY_TF32", "1")  # set_tf32 leaves the environment alone
    with pytest.raises(MinigptError) as info:
        get_xp("gpu")
    message = str(info.value)
    assert "driver" in message and "--device cpu" in message
    assert "install the GPU extra" not in message and "pip install" not in message


def test_get_xp_leaves_the_allocator_alone(monkeypatch):
    """Tuning glibc's malloc is process-wide: only an explicit tune_host_allocator() does it."""
    import ctypes

    from minigpt import host_memory

    calls = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name: calls.append(name) or types_namespace(calls))
    get_xp("cpu")
    assert calls == []
    host_memory.tune_host_allocator()
    assert calls[0] == "libc.so.6" and sorted(calls[1:]) == [(-8, 1), (-4, 0), (-2, 64 << 20), (-1, -1)]


def types_namespace(calls):
    """A stand-in libc whose mallopt records its (option, value) calls."""
    import types

    return types.SimpleNamespace(mallopt=lambda option, value: calls.append((option, value)))


KEEPS_FREED_MEMORY = """
import os
import sys
import numpy as np
from minigpt import host_memory
if sys.argv[1] == "tuned":
    host_memory.tune_host_allocator()
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = resident_mb()
block = np.ones(64 << 18, dtype=np.float32)  # 64 MiB, every page written
del block
print(resident_mb() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not Path("/proc/self/statm").exists(),
                    reason="glibc on Linux only")
def test_the_tuned_allocator_keeps_a_freed_large_block_resident():
    """Untuned, glibc unmaps a freed 64 MiB block at once; tuned, the process keeps it for the next step."""
    def kept(mode):
        result = subprocess.run([sys.executable, "-c", KEEPS_FREED_MEMORY, mode], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent.parent)
        assert result.returncode == 0, result.stderr
        return float(result.stdout)

    assert kept("default") < 8
    assert kept("tuned") > 60
