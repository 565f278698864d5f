"""scripts/bench/machine.py: the "# machine:" header every benchmark prints, and how it reads the CPU and the BLAS.

No torch here: PyTorch's side is read from a stand-in "Python" (a shell script) that prints what the probe would.
"""

import json
import os
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "bench"))
import machine  # noqa: E402

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: some other name
flags\t\t: fpu
"""

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd0c
"""

# The lines of torch.__config__.show() that the header reads (torch 2.13 CPU wheel, then an aarch64 one).
TORCH_MKL = """PyTorch built with:
  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for Intel(R) 64 architecture applications
  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)
  - CPU capability usage: AVX512
  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, LAPACK_INFO=mkl, TORCH_VERSION=2.13.0, USE_MKL=ON,
"""
TORCH_OPENBLAS = """PyTorch built with:
  - Intel(R) MKL-DNN v3.7.1 (Git Hash 8d263e693366ef8db40acc569cc7d8edf644556d)
  - CPU capability usage: SVE256
  - Build settings: BLAS_INFO=open, BUILD_TYPE=Release, LAPACK_INFO=open, USE_MKL=OFF,
"""


def test_cpuinfo_gives_the_first_processors_model_and_flags():
    model, flags = machine.parse_cpuinfo(X86_CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (family 6, model 143)"
    assert "amx_tile" in flags and "fpu" in flags and len(flags) == 9


def test_arm_cpuinfo_names_the_core_by_its_part_number():
    model, flags = machine.parse_cpuinfo(ARM_CPUINFO)
    assert model == "Neoverse-N1" and "asimd" in flags
    other = ARM_CPUINFO.replace("0x41", "0xc0")  # Ampere's own cores: no name in the table
    assert machine.parse_cpuinfo(other)[0] == "ARM implementer 0xc0, part 0xd0c"
    assert machine.parse_cpuinfo("Hardware\t: Raspberry Pi 4\nFeatures\t: fp asimd\n")[0] == "Raspberry Pi 4"


@pytest.mark.parametrize("flags, machine_name, widest", [
    (machine.parse_cpuinfo(X86_CPUINFO)[1], "x86_64", "AMX"),
    (["sse2", "avx", "avx2", "avx512f", "avx512_bf16"], "x86_64", "AVX-512"),
    (["sse2", "avx", "avx2", "fma"], "x86_64", "AVX2"),
    (["sse2", "avx"], "x86_64", "AVX"),
    (["FPU", "AVX1.0", "SSE4.2"], "x86_64", "AVX"),  # macOS's spelling
    (["AVX2", "AVX512F", "AVX512BW"], "x86_64", "AVX-512"),
    (["sse2"], "x86_64", "SSE2"),
    (["fp", "asimd", "sve", "sve2"], "aarch64", "SVE2"),
    (["fp", "asimd", "sve"], "aarch64", "SVE"),
    (machine.parse_cpuinfo(ARM_CPUINFO)[1], "aarch64", "NEON"),
    ([], "arm64", "NEON"),  # Apple silicon lists no flags
    ([], "riscv64", "unknown"),
])
def test_the_widest_vector_extension(flags, machine_name, widest):
    assert machine.widest_vector_extension(flags, machine_name) == widest


def test_torch_config_lines():
    assert machine.parse_torch_config(TORCH_MKL) == {"blas": "mkl", "mkl": "2024.2", "onednn": "v3.12.0",
                                                     "capability": "AVX512"}
    assert machine.parse_torch_config(TORCH_OPENBLAS) == {"blas": "open", "mkl": None, "onednn": "v3.7.1",
                                                          "capability": "SVE256"}
    assert machine.parse_torch_config("") == {"blas": None, "mkl": None, "onednn": None, "capability": None}


def fake_python(tmp_path, script: str) -> str:
    """An executable that stands for a torch Python: it ignores `-c PROBE` and runs `script` (sh)."""
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.skipif(os.name != "posix", reason="the stand-in is a shell script")
def test_torch_blas_reads_the_probes_json_line(tmp_path):
    probe = {"version": "2.13.0+cpu", "config": TORCH_MKL, "capability": "AVX512", "threads": 2}
    python = fake_python(tmp_path, f"echo 'some warning'\ncat <<'EOF'\n{json.dumps(probe)}\nEOF\n")
    torch = machine.torch_blas(python)
    assert torch == {"python": python, "version": "2.13.0+cpu", "blas": "mkl", "mkl": "2024.2", "onednn": "v3.12.0",
                     "capability": "AVX512", "threads": 2}
    assert machine.format_torch(torch) == ("PyTorch 2.13.0+cpu: BLAS mkl (MKL 2024.2, oneDNN v3.12.0), "
                                           "CPU capability AVX512, 2 threads")


@pytest.mark.skipif(os.name != "posix", reason="the stand-in is a shell script")
def test_a_python_without_torch_is_said_in_the_header_not_raised(tmp_path):
    python = fake_python(tmp_path, "echo \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    assert machine.torch_blas(python) == {"python": python, "error": "ModuleNotFoundError: No module named 'torch'"}
    missing = machine.torch_blas(str(tmp_path / "no-such-python"))
    assert "No such file" in missing["error"]
    assert machine.format_torch(missing).startswith(f"PyTorch: {tmp_path / 'no-such-python'} did not answer (")


def described(**changes) -> dict:
    d = {"date": "2026-12-05 06:52 UTC", "cpu": "AMD EPYC (family 25, model 17)", "vector_extension": "AVX-512",
         "logical_cores": 4, "usable_cores": 2, "load_1min": 0.56, "python": "3.11.7", "numpy": "2.4.6",
         "numpy_blas": {"library": "openblas", "version": "0.3.31", "kernel": "SkylakeX", "threads": 2},
         "env": {"OMP_NUM_THREADS": "1"}, "torch": None}
    return {**d, **changes}


def test_the_header_is_two_machine_lines_with_every_field():
    lines = machine.format_header(described()).splitlines()
    assert lines == [
        "# machine: 2026-12-05 06:52 UTC | AMD EPYC (family 25, model 17) | AVX-512 | 4 logical cores, 2 usable "
        "| load 0.56",
        "# machine: Python 3.11.7 | numpy 2.4.6, OpenBLAS 0.3.31 (kernel SkylakeX, 2 threads) "
        "| PyTorch: none in this Python | OMP_NUM_THREADS=1",
    ]
    plain = machine.format_header(described(usable_cores=4, load_1min=None, env={},
                                            numpy_blas={"library": "accelerate", "version": None, "kernel": None,
                                                        "threads": None}))
    assert plain.splitlines()[0].endswith("| AVX-512 | 4 logical cores")
    assert plain.splitlines()[1] == "# machine: Python 3.11.7 | numpy 2.4.6, accelerate None | PyTorch: none in this Python"


def test_this_machine_is_described_without_torch():
    d = machine.describe(torch_python=None) if machine.torch_python_or_none(None) is None else None
    if d is None:
        pytest.skip("torch is importable here: describe() would ask it in a subprocess")
    assert d["logical_cores"] == os.cpu_count() and 1 <= d["usable_cores"] <= d["logical_cores"]
    assert d["cpu"] and d["vector_extension"] != "" and d["numpy_blas"]["library"]
    assert d["torch"] is None
    assert all(line.startswith("# machine: ") for line in machine.format_header(d).splitlines())
