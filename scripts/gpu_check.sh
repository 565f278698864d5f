#!/usr/bin/env bash
# The GPU path checked end to end on a machine with an NVIDIA GPU, in one command, within 8 minutes:
#
#   bash scripts/gpu_check.sh            # report in $OUT/report.txt when $OUT is set, else ./gpu_report.txt
#
# Steps, each time-boxed with `timeout`; a failing step is recorded and the next one runs:
#   1. nvidia-smi                 the driver sees a GPU (without one, every later step is skipped)
#   2. install                    pip install -e '.[gpu,dev]' (CuPy with its CUDA toolkit extra), unless
#                                 CuPy already imports and compiles a kernel here
#   3. GPU tests                  the kernel/layer/model/parity tests on CPU and GPU, TF32 off (strict parity)
#   4. CPU/GPU training match     five AdamW steps on both devices, TF32 on (the default)
#   5. bench_gpu.py               GPT-2 124M training step (B=8, T=1024) against PyTorch eager, same process
#                                 (the PyTorch rows need torch with CUDA and transformers: a note otherwise)
#   6. train.py --device gpu      300 iterations of the default model on the built-in pydoc corpus
#   7. generate.py --device gpu   200 tokens from step 6's checkpoint
# The exit status is 0 when every step passed.
set -u

# Internal: `gpu_check.sh --pytest ARGS` runs pytest and fails when GPU tests were skipped
# (pytest passes when they skip; here a skip for want of a device is a failure).
if [ "${1:-}" = "--pytest" ]; then
    shift
    log=$(mktemp)
    "${PYTHON:-python3}" -m pytest -q -rs -p no:cacheprovider "$@" > "$log" 2>&1
    rc=$?
    cat "$log"
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
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}  # all steps together; each step also has its own limit
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

# step NAME LIMIT_S COMMAND...: run COMMAND with a time limit, record its status, time and output's tail.
step() {
    local name=$1 limit=$2 left status rc t0 seconds
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
    timeout --kill-after=10 "$limit" "$@" > "$WORK/step.log" 2>&1
    rc=$?
    seconds=$(($(date +%s) - t0))
    if [ "$rc" -eq 0 ]; then
        status="ok"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status="TIMED OUT after ${limit}s"
    else
        status="FAILED (exit $rc)"
    fi
    tail -n 60 "$WORK/step.log" | sed 's/\r/\n/g' | tail -n 60 >> "$REPORT"
    note "-- $name: $status, ${seconds}s"
    SUMMARY+=("$(printf '%-8s %s (%ss)' "${status%% *}" "$name" "$seconds")")
    [ "$rc" -eq 0 ] || FAILED=1
    return "$rc"
}

skip_rest() {
    local reason=$1
    shift
    for name in "$@"; do SUMMARY+=("SKIPPED  $name ($reason)"); done
    FAILED=1
}

cupy_works() {
    "$PYTHON" -c "from minigpt.backend import get_xp; get_xp('gpu')"
}

note "minigpt GPU check: $(date -u '+%Y-%m-%d %H:%M UTC'), host $(hostname), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
note "python: $("$PYTHON" --version 2>&1)"

NO_GPU=""
STEPS=("GPU tests" "CPU/GPU training match" "bench_gpu.py" "train.py --device gpu" "generate.py --device gpu")
if ! command -v nvidia-smi > /dev/null 2>&1; then
    note ""
    note "== nvidia-smi: not found: this machine has no NVIDIA driver, so no GPU to check"
    SUMMARY+=("FAILED   nvidia-smi (not found: no NVIDIA driver on this machine)")
    NO_GPU="no NVIDIA GPU here (nvidia-smi not found): nothing was checked"
    skip_rest "no GPU" "install" "${STEPS[@]}"
elif ! step "nvidia-smi" 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; then
    NO_GPU="no usable NVIDIA GPU here (nvidia-smi failed): nothing was checked"
    skip_rest "no usable GPU" "install" "${STEPS[@]}"
else
    if cupy_works > "$WORK/probe.log" 2>&1; then
        note ""
        note "== install: skipped, CuPy already imports and compiles a kernel here"
        SUMMARY+=("ok       install (already there)")
    else
        note ""
        note "== before install: $(tail -n 1 "$WORK/probe.log")"
        step "install" 180 "$PYTHON" -m pip install --quiet -e ".[gpu,dev]"
    fi
    if ! cupy_works > "$WORK/probe.log" 2>&1; then
        note "== CuPy does not work: $(tail -n 1 "$WORK/probe.log")"
        skip_rest "CuPy does not work" "${STEPS[@]}"
    else
        step "GPU tests" 120 env MINIGPT_TF32=0 PYTHON="$PYTHON" bash "$SELF" --pytest tests/test_kernels.py \
            tests/test_batched_matmul.py tests/test_parity.py tests/test_nn.py tests/test_model.py tests/test_generation.py
        step "CPU/GPU training match" 60 env MINIGPT_TF32=1 PYTHON="$PYTHON" bash "$SELF" --pytest tests/test_kernels.py \
            -k short_training_run
        step "bench_gpu.py" 150 "$PYTHON" scripts/bench/bench_gpu.py --steps 10 --warmup 3
        step "train.py --device gpu" 90 "$PYTHON" scripts/train.py --device gpu --max_iters 300 --eval_interval 100 \
            --eval_iters 10 --log_interval 50 --out_dir "$WORK/run" --overwrite
        step "generate.py --device gpu" 45 "$PYTHON" scripts/generate.py --checkpoint "$WORK/run" --device gpu \
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
