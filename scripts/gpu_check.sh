#!/usr/bin/env bash
# The GPU path checked end to end on a machine with an NVIDIA GPU, in one command, within 8 minutes:
#
#   bash scripts/gpu_check.sh            # report in $OUT/report.txt when $OUT is set, else ./gpu_report.txt
#
# Steps, each time-boxed with `timeout` (limits in seconds; they add up to the 450 s budget, so the
# whole script, probes included, ends within 8 minutes); a failing step is recorded and the next one runs:
#   1. nvidia-smi            10   the driver sees a GPU (without one, every later step is skipped)
#   2. install               60   pip install -e '.[gpu,dev]', only when no CuPy wheel is installed at all.
#                                 A CuPy that imports but cannot run a kernel is reported, never joined by a
#                                 second CuPy (cupy-cuda12x beside cupy-cuda13x breaks both; the lent
#                                 machines have no network anyway)
#   3. compile kernels       90   scripts/gpu_warmup.py: NVRTC compiles every kernel cold, each one timed
#   4. GPU tests            120   the kernel/layer/model/parity tests on CPU and GPU, TF32 off (strict parity)
#   5. CPU/GPU training match 35  five AdamW steps on both devices, TF32 on (the default)
#   6. bench_gpu.py          75   GPT-2 124M training step (B=8, T=1024) against PyTorch eager, same process
#                                 (the PyTorch rows need torch with CUDA and transformers: a note otherwise)
#   7. train.py --device gpu 45   200 iterations of the default model on the built-in pydoc corpus
#   8. generate.py --device gpu 15  200 tokens from step 7's checkpoint
# Each step's output is streamed into the report (and to stdout) as it comes, so a step that times out, or a
# run cut short from outside, keeps what it printed. pytest adds --durations: the slowest tests, timed.
# The exit status is 0 when every step passed.
#
# Internal modes, for tests/test_gpu_check.py: `gpu_check.sh --step NAME LIMIT COMMAND...` runs one step as
# the check does (report in $OUT/report.txt); `gpu_check.sh --pytest ARGS` is the GPU test steps' pytest.
set -u

# Internal: `gpu_check.sh --pytest ARGS` runs pytest and fails when GPU tests were skipped
# (pytest passes when they skip; here a skip for want of a device is a failure).
if [ "${1:-}" = "--pytest" ]; then
    shift
    log=$(mktemp)
    # Streamed through tee, pytest's own status kept: when `timeout` ends the step, what pytest printed up to
    # then is already on its way to the report (PYTHONUNBUFFERED: none of it waits in Python's buffer).
    PYTHONUNBUFFERED=1 "${PYTHON:-python3}" -m pytest -q -rs -p no:cacheprovider --durations=15 "$@" 2>&1 \
        | tee "$log"
    rc=${PIPESTATUS[0]}
    if grep -q "needs CuPy and a CUDA device" "$log"; then
        echo "gpu_check: GPU tests were skipped (CuPy or the device not usable from pytest)"
        rc=1
    fi
    rm -f "$log"
    exit "$rc"
fi

SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
REPORT="${OUT:+$OUT/report.txt}"
REPORT="${REPORT:-$ROOT/gpu_report.txt}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PYTHON=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}  # all steps together (their limits add up to it); each has its own limit
START=$(date +%s)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${MINIGPT_GPT2_TOKENIZER_DIR:-}" ] && [ -d "$ROOT/../shared/data" ]; then
    export MINIGPT_GPT2_TOKENIZER_DIR="$ROOT/../shared/data"  # GPT-2's tokenizer files for the exact-ids tests
fi

mkdir -p "$(dirname "$REPORT")"
: > "$REPORT"
SUMMARY=()
FAILED=0

note() { printf '%s\n' "$*" >> "$REPORT"; }

# step NAME LIMIT_S COMMAND...: run COMMAND with a time limit, stream its output into the report, record
# its status and time. tee is outside timeout's process group, so it outlives a killed command.
step() {
    local name=$1 limit=$2 left status word rc t0 seconds
    shift 2
    left=$((BUDGET_S - ($(date +%s) - START)))
    if [ "$left" -lt 10 ]; then
        SUMMARY+=("SKIPPED  $name (the ${BUDGET_S}s budget is spent)")
        FAILED=1
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    note ""
    note "== $name (limit ${limit}s): $*"
    t0=$(date +%s)
    PYTHONUNBUFFERED=1 timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$REPORT"
    rc=${PIPESTATUS[0]}
    seconds=$(($(date +%s) - t0))
    if [ "$rc" -eq 0 ]; then
        status="ok" word="ok"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status="TIMED OUT after ${limit}s" word="TIMEOUT"
    else
        status="FAILED (exit $rc)" word="FAILED"
    fi
    note "-- $name: $status, ${seconds}s"
    SUMMARY+=("$(printf '%-8s %s (%ss of %ss)' "$word" "$name" "$seconds" "$limit")")
    [ "$rc" -eq 0 ] || FAILED=1
    return "$rc"
}

skip_rest() {
    local reason=$1
    shift
    for name in "$@"; do SUMMARY+=("SKIPPED  $name ($reason)"); done
    FAILED=1
}

# One line on CuPy here: which wheels are installed, whether `import cupy` works, whether a kernel runs.
# Exit status 0: it works; 3: no CuPy wheel at all (install one); 4: a CuPy is there but broken (no install).
CUPY_STATE='
import importlib.metadata as metadata, sys
def name(d):
    return d.metadata["Name"] or ""
wheels = sorted({f"{name(d)} {d.version}" for d in metadata.distributions() if name(d).lower().startswith("cupy")})
named = ", ".join(wheels) or "no CuPy wheel"
two = "; TWO CuPy wheels: uninstall all but the one for this CUDA" if len(wheels) > 1 else ""
try:
    import cupy
except ImportError as err:
    print(f"CuPy does not import ({named}): {err}{two}")
    sys.exit(4 if wheels else 3)
from minigpt.backend import get_xp
from minigpt.errors import MinigptError
try:
    get_xp("gpu")
except MinigptError as err:
    print(f"CuPy {cupy.__version__} ({named}) imports but does not work: {err}{two}")
    sys.exit(4)
runtime = cupy.cuda.runtime
print(f"CuPy {cupy.__version__} ({named}) works: CUDA runtime {runtime.runtimeGetVersion()}, driver "
      f"{runtime.driverGetVersion()}, {runtime.getDeviceCount()} GPU(s){two}")
'
cupy_state() {
    "$PYTHON" -c "$CUPY_STATE" 2>&1 | tail -n 1
    return "${PIPESTATUS[0]}"
}

# Internal: `gpu_check.sh --step NAME LIMIT COMMAND...`: one step, as the check runs it (tests drive this).
if [ "${1:-}" = "--step" ]; then
    shift
    step "$@"
    printf '%s\n' "${SUMMARY[@]}" >> "$REPORT"
    exit "$FAILED"
fi

note "minigpt GPU check: $(date -u '+%Y-%m-%d %H:%M UTC'), host $(hostname), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
note "python: $("$PYTHON" --version 2>&1)"

NO_GPU=""
STEPS=("compile kernels" "GPU tests" "CPU/GPU training match" "bench_gpu.py" "train.py --device gpu"
       "generate.py --device gpu")
if ! command -v nvidia-smi > /dev/null 2>&1; then
    note ""
    note "== nvidia-smi: not found: this machine has no NVIDIA driver, so no GPU to check"
    SUMMARY+=("FAILED   nvidia-smi (not found: no NVIDIA driver on this machine)")
    NO_GPU="no NVIDIA GPU here (nvidia-smi not found): nothing was checked"
    skip_rest "no GPU" "install" "${STEPS[@]}"
elif ! step "nvidia-smi" 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; then
    NO_GPU="no usable NVIDIA GPU here (nvidia-smi failed): nothing was checked"
    skip_rest "no usable GPU" "install" "${STEPS[@]}"
else
    state=$(cupy_state)
    code=$?
    note ""
    note "== cupy: $state"
    if [ "$code" -eq 0 ]; then
        SUMMARY+=("ok       install (CuPy already works here)")
    elif [ "$code" -eq 3 ]; then
        step "install" 60 "$PYTHON" -m pip install --quiet -e ".[gpu,dev]"
        state=$(cupy_state)
        code=$?
        note "== cupy after install: $state"
    else
        SUMMARY+=("SKIPPED  install (a CuPy is installed but broken: not adding a second one; see the cupy line)")
    fi
    if [ "$code" -ne 0 ]; then
        skip_rest "CuPy does not work: $state" "${STEPS[@]}"
    else
        step "compile kernels" 90 "$PYTHON" scripts/gpu_warmup.py
        step "GPU tests" 120 env MINIGPT_TF32=0 PYTHON="$PYTHON" bash "$SELF" --pytest tests/test_kernels.py \
            tests/test_batched_matmul.py tests/test_parity.py tests/test_nn.py tests/test_model.py tests/test_generation.py
        step "CPU/GPU training match" 35 env MINIGPT_TF32=1 PYTHON="$PYTHON" bash "$SELF" --pytest tests/test_kernels.py \
            -k short_training_run
        step "bench_gpu.py" 75 "$PYTHON" scripts/bench/bench_gpu.py --steps 10 --warmup 3
        step "train.py --device gpu" 45 "$PYTHON" scripts/train.py --device gpu --max_iters 200 --eval_interval 100 \
            --eval_iters 10 --log_interval 50 --out_dir "$WORK/run" --overwrite
        step "generate.py --device gpu" 15 "$PYTHON" scripts/generate.py --checkpoint "$WORK/run" --device gpu \
            --max-new-tokens 200 --seed 0
    fi
fi

{
    echo ""
    echo "== summary ($(($(date +%s) - START))s in all)"
    printf '%s\n' "${SUMMARY[@]}"
} >> "$REPORT"
if [ -n "$NO_GPU" ]; then
    echo "gpu_check: $NO_GPU; report in $REPORT" >&2
    exit 1
elif [ "$FAILED" -ne 0 ]; then
    echo "gpu_check: some steps failed or were skipped; see $REPORT" >&2
    exit 1
fi
echo "gpu_check: every step passed; see $REPORT"
