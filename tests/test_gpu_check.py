"""scripts/gpu_check.sh without a GPU: it fails cleanly, keeps a killed step's output, and never adds a second CuPy.

The script runs on a lent GPU machine in one 10-minute call; what it prints is
all that comes back. So a step that hangs must leave its output in the report
(streamed, not printed after the step returns), the step limits must fit the
budget, and a CuPy that imports but fails its probe is reported, not
"repaired" by pip-installing another CuPy beside it.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run_script(*args, env=None, timeout=60):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})}, timeout=timeout)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver")
def test_without_a_gpu_the_check_fails_cleanly(tmp_path):
    result = run_script(env={"OUT": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no NVIDIA GPU here (nvidia-smi not found)" in result.stderr
    report = (tmp_path / "report.txt").read_text()
    assert "nvidia-smi: not found" in report and "SKIPPED  GPU tests (no GPU)" in report


def test_a_step_that_times_out_keeps_its_output_in_the_report(tmp_path):
    result = run_script("--step", "slow step", 1, "bash", "-c", "echo started the slow part; sleep 30",
                        env={"OUT": str(tmp_path)})
    report = (tmp_path / "report.txt").read_text()
    assert result.returncode == 1
    assert "started the slow part" in report  # printed before timeout killed it
    assert "-- slow step: TIMED OUT after 1s" in report and "TIMEOUT  slow step (1s of 1s)" in report


def test_the_pytest_steps_stream_what_pytest_printed_before_they_were_killed(tmp_path):
    """As `timeout` ends a GPU test step: the process group is killed while a test hangs."""
    started = tmp_path / "hanging"
    (tmp_path / "test_fake_gpu.py").write_text(
        "import pathlib, time\n"
        "def test_first():\n"
        "    print('the first test ran', flush=True)\n"
        "def test_hangs():\n"
        f"    pathlib.Path({str(started)!r}).touch()\n"
        "    time.sleep(60)\n")
    proc = subprocess.Popen(["bash", str(SCRIPT), "--pytest", "-s", str(tmp_path / "test_fake_gpu.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHON": sys.executable}, cwd=tmp_path)
    try:
        deadline = time.time() + 30
        while not started.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert started.exists()
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)  # what timeout does to the step's process group
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "the first test ran" in output


def test_the_step_limits_add_up_within_the_budget_and_8_minutes():
    text = SCRIPT.read_text()
    limits = {name: int(limit) for name, limit in re.findall(r'step "([^"$]+)" (\d+) ', text)}
    budget = int(re.search(r"BUDGET_S=\$\{GPU_CHECK_BUDGET_S:-(\d+)\}", text).group(1))
    assert len(limits) == 8, limits
    assert sum(limits.values()) <= budget <= 8 * 60 - 30  # 30 s left for the probes, notes and summary
    assert limits["GPU tests"] >= 120 and limits["compile kernels"] >= 60  # NVRTC compiles every kernel cold
    assert "--durations" in text


FAKE_NVIDIA_SMI = "#!/bin/sh\necho 'name, driver_version, memory.total [MiB]'\necho 'NVIDIA H200, 580.65, 143771 MiB'\n"
BROKEN = {
    "probe fails": ("__version__ = '14.2.0'\n"
                    "class cuda:\n"
                    "    class runtime:\n"
                    "        getDeviceCount = staticmethod(lambda: 1)\n"
                    "def zeros(*args, **kwargs):\n"
                    "    return None\n"
                    "class ElementwiseKernel:\n"
                    "    def __init__(self, *args, **kwargs):\n"
                    "        raise RuntimeError('nvrtc: error: failed to open libnvrtc-builtins.so.13.0')\n",
                    "imports but does not work: --device gpu: CuPy sees a GPU but cannot compile"),
    "import fails": ("raise ImportError('libcudart.so.13: cannot open shared object file')\n",
                     "CuPy does not import (cupy-cuda13x 14.2.0): libcudart.so.13"),
}


@pytest.mark.parametrize("how", list(BROKEN))
def test_a_broken_cupy_is_reported_and_no_second_cupy_is_installed(tmp_path, how):
    """A GPU machine whose cupy-cuda13x imports but cannot run a kernel (or does not import): no pip install."""
    code, words = BROKEN[how]
    bin_dir, site = tmp_path / "bin", tmp_path / "site"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    (site / "cupy").mkdir(parents=True)
    (site / "cupy" / "__init__.py").write_text(code)
    (site / "cupy_cuda13x-14.2.0.dist-info").mkdir()
    (site / "cupy_cuda13x-14.2.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: cupy-cuda13x\nVersion: 14.2.0\n")
    env = {"OUT": str(tmp_path / "out"), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(site), "PIP_NO_INDEX": "1"}  # were pip run, it could not reach an index
    result = run_script(env=env)
    report = (tmp_path / "out" / "report.txt").read_text()
    assert result.returncode == 1
    assert words in report
    assert "== install (limit" not in report  # pip never ran
    assert "SKIPPED  install (a CuPy is installed but broken" in report
    assert "SKIPPED  GPU tests (CuPy does not work" in report


def test_the_warm_up_step_builds_every_kernel_in_both_precisions(capsys, monkeypatch):
    """scripts/gpu_warmup.py under the strict stand-in: every kernel of every source is fetched (NVRTC would
    compile it there), each ElementwiseKernel run in both precisions, then one training step per precision."""
    import runpy

    from tests import device_standin
    from tests.test_kernels import cuda_sources

    fetched = []
    get_function = device_standin.RawModule.get_function
    monkeypatch.setattr(device_standin.RawModule, "get_function",
                        lambda self, expression: fetched.append(expression) or get_function(self, expression))
    with device_standin.installed():
        assert runpy.run_path(str(REPO / "scripts" / "gpu_warmup.py"))["main"]([]) == 0
        launches = dict(device_standin.LAUNCHES)
    out = capsys.readouterr().out
    for label, source in cuda_sources():
        assert f"compiled {label.split(':')[0]}:" in out
        assert set(getattr(source, "name_expressions", ())) <= set(fetched), label
        if hasattr(source, "in_params"):
            assert launches[f"kernel {source.name}"] >= 2, label  # float32 and float64
    assert "one training step in float32" in out and "one training step in float64" in out
