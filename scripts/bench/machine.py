"""Where a benchmark ran: the two "# machine:" lines every script in scripts/bench/ prints first.

    python scripts/bench/machine.py                                        # the header, for this Python
    python scripts/bench/machine.py --torch-python /path/to/venv/bin/python  # with that Python's PyTorch
    python scripts/bench/machine.py --json                                 # describe()'s dict

A timing means little without the machine: the same code ran 1.2x faster on a
Sapphire Rapids core than on a Zen 4 one, and PyTorch 1.6x (issue 24). The
header gives what decides a float32 step: the CPU model, its widest vector
extension, the cores this process may use, numpy's BLAS and the kernel it
picked for this CPU (threadpoolctl), the variables that override them, the load
while it ran, and PyTorch's BLAS. PyTorch is asked in a subprocess of the
Python that has it, so torch is never imported into minigpt's process.
"""

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import threadpoolctl

# Variables that change which BLAS kernel runs or on how many threads, when set.
ENV_KNOBS = ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

# Arm's own server cores by "CPU part" (implementer 0x41), the usual ones in clouds (Graviton 2-4, Ampere Altra).
ARM_PARTS = {"0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2",
             "0xd8e": "Neoverse-N3", "0xd84": "Neoverse-V3"}

# threadpoolctl's names for the BLAS libraries, as their projects write them.
BLAS_NAMES = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS", "flexiblas": "FlexiBLAS"}

# Run by the PyTorch Python: everything about torch's CPU side that a timing depends on, as one JSON line.
TORCH_PROBE = """
import json, torch
capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)()
print(json.dumps({"version": torch.__version__, "config": torch.__config__.show(),
                  "capability": capability, "threads": torch.get_num_threads()}))
"""


# -- the CPU ------------------------------------------------------------------------------------


def parse_cpuinfo(text: str) -> tuple:
    """(model, flags) from Linux's /proc/cpuinfo: x86 says "model name" and "flags", ARM "CPU part" and "Features"."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())  # the first processor's; the others repeat it
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    model = fields.get("model name") or fields.get("Hardware")
    if model and "cpu family" in fields:  # x86: a VM may say only "AMD EPYC"; family 25 model 17 is Zen 4
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    if not model and "CPU part" in fields:
        part = fields["CPU part"]
        model = ARM_PARTS.get(part) if fields.get("CPU implementer") == "0x41" else None
        model = model or f"ARM implementer {fields.get('CPU implementer', '?')}, part {part}"
    return model, flags


def widest_vector_extension(flags, machine: str = "") -> str:
    """The widest SIMD extension among the CPU's flags: what the BLAS kernels and ufunc loops can use.

    AMX (tile matrix multiply, Sapphire Rapids on) comes with AVX-512; aarch64
    always has NEON (its flag is "asimd"), SVE/SVE2 on newer cores. macOS spells
    them in capitals (AVX1.0, AVX2, AVX512F): case is ignored.
    """
    flags = {flag.lower() for flag in flags}
    if flags & {"amx_tile", "amx_bf16", "amx_int8"}:
        return "AMX"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    if flags & {"avx", "avx1.0"}:
        return "AVX"
    if "sve2" in flags:
        return "SVE2"
    if "sve" in flags:
        return "SVE"
    if flags & {"asimd", "neon"} or machine.lower() in ("aarch64", "arm64"):
        return "NEON"
    return "SSE2" if machine.lower() in ("x86_64", "amd64") else "unknown"


def cpu() -> tuple:
    """(model, flags) of this machine's CPU, by the means each system offers."""
    machine = platform.machine()
    if os.path.exists("/proc/cpuinfo"):  # Linux
        with open("/proc/cpuinfo") as f:
            model, flags = parse_cpuinfo(f.read())
        return model or platform.processor() or machine, flags
    if sys.platform == "darwin":  # Intel Macs list their features; Apple silicon has NEON (and no such keys)
        model = sysctl("machdep.cpu.brand_string")
        flags = f"{sysctl('machdep.cpu.features')} {sysctl('machdep.cpu.leaf7_features')}".split()
        return model or machine, flags
    return platform.processor() or machine, []


def sysctl(name: str) -> str:
    """macOS's value for `name`, "" where it has none."""
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def usable_cores():
    """Cores this process may run on (taskset, cgroups' cpusets, a container's share): fewer than os.cpu_count() at times."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# -- numpy's BLAS -------------------------------------------------------------------------------


def numpy_blas() -> dict:
    """numpy's BLAS as threadpoolctl sees it loaded: library, version, kernel (OpenBLAS's pick for this CPU), threads."""
    loaded = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    ours = [lib for lib in loaded if "numpy" in lib.get("filepath", "")] or loaded  # another package may load one too
    if not ours:  # e.g. Apple's Accelerate, which threadpoolctl does not list: numpy's build says which it is
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        except (TypeError, KeyError):  # numpy before 1.26 has no mode="dicts"
            blas = {}
        return {"library": blas.get("name", "unknown"), "version": blas.get("version"), "kernel": None, "threads": None}
    lib = ours[0]
    return {"library": lib["internal_api"], "version": lib.get("version"), "kernel": lib.get("architecture"),
            "threads": lib.get("num_threads")}


# -- PyTorch's BLAS -----------------------------------------------------------------------------


def parse_torch_config(text: str) -> dict:
    """BLAS, MKL and oneDNN versions and the CPU capability from torch.__config__.show()'s text."""

    def find(pattern):
        match = re.search(pattern, text)
        return match.group(1) if match else None

    return {"blas": find(r"BLAS_INFO=([^,\s]+)"), "mkl": find(r"Math Kernel Library Version ([\d.]+)"),
            "onednn": find(r"(?:MKL-DNN|oneDNN)\s+(v[\d.]+)"), "capability": find(r"CPU capability usage: (\S+)")}


def torch_blas(torch_python: str) -> dict:
    """PyTorch's version, BLAS and threads, from a subprocess of `torch_python` (never imported here)."""
    try:
        result = subprocess.run([torch_python, "-c", TORCH_PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as err:  # no such file, not executable, hung
        return {"python": torch_python, "error": str(err)}
    try:
        probe = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):  # no torch there, most often: its last line of stderr says so
        return {"python": torch_python, "error": (result.stderr.strip().splitlines() or ["no output"])[-1]}
    parsed = parse_torch_config(probe["config"])
    return {"python": torch_python, "version": probe["version"], **parsed,
            "capability": probe["capability"] or parsed["capability"], "threads": probe["threads"]}


def torch_python_or_none(torch_python):
    """The Python to ask about PyTorch: the one given, else this one if it has torch, else None."""
    if torch_python:
        return str(torch_python)
    return sys.executable if importlib.util.find_spec("torch") else None


# -- the header ---------------------------------------------------------------------------------


def describe(torch_python=None) -> dict:
    """Everything the header prints, as a dict (bench_train.py puts it in its JSON)."""
    model, flags = cpu()
    torch_python = torch_python_or_none(torch_python)
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "vector_extension": widest_vector_extension(flags, platform.machine()),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": numpy_blas(),
        "env": {name: os.environ[name] for name in ENV_KNOBS if name in os.environ},
        "torch": torch_blas(torch_python) if torch_python else None,
    }


def format_torch(torch: dict) -> str:
    """The header's PyTorch part: 'PyTorch 2.13.0: BLAS mkl (MKL 2024.2, oneDNN v3.12.0), ...', or why there is none."""
    if torch is None:
        return "PyTorch: none in this Python"
    if "error" in torch:
        return f"PyTorch: {torch['python']} did not answer ({torch['error']})"
    libraries = ", ".join(f"{name} {torch[key]}" for name, key in (("MKL", "mkl"), ("oneDNN", "onednn")) if torch[key])
    return (f"PyTorch {torch['version']}: BLAS {torch['blas']}" + (f" ({libraries})" if libraries else "")
            + f", CPU capability {torch['capability']}, {torch['threads']} threads")


def format_header(d: dict) -> str:
    """describe()'s dict as two "# machine:" lines: the CPU and the moment, then the libraries."""
    blas = d["numpy_blas"]
    details = ", ".join(part for part in (blas["kernel"] and f"kernel {blas['kernel']}",
                                          blas["threads"] and f"{blas['threads']} threads") if part)
    load = "" if d["load_1min"] is None else f" | load {d['load_1min']:.2f}"
    cores = f"{d['logical_cores']} logical cores" + (
        f", {d['usable_cores']} usable" if d["usable_cores"] != d["logical_cores"] else "")
    env = "".join(f" | {name}={value}" for name, value in d["env"].items())
    return (f"# machine: {d['date']} | {d['cpu']} | {d['vector_extension']} | {cores}{load}\n"
            f"# machine: Python {d['python']} | numpy {d['numpy']}, "
            f"{BLAS_NAMES.get(blas['library'], blas['library'])} {blas['version']}"
            + (f" ({details})" if details else "") + f" | {format_torch(d['torch'])}{env}")


def header(torch_python=None) -> str:
    """The two "# machine:" lines for this process (and `torch_python`'s PyTorch)."""
    return format_header(describe(torch_python))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", help="a Python that has torch (default: this one, if it has)")
    parser.add_argument("--json", action="store_true", help="print describe()'s dict as JSON instead")
    args = parser.parse_args(argv)
    print(json.dumps(describe(args.torch_python)) if args.json else header(args.torch_python))


if __name__ == "__main__":
    main()
