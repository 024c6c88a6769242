#!/usr/bin/env bash
# The one command a machine with a GPU runs to check and measure the cuda backend, and its rehearsal without one:
#
#     bash benchmarks/gpu_check.sh             on the GPU machine (about 8 minutes; results in benchmarks/results/)
#     bash benchmarks/gpu_check.sh --dry-run   anywhere: every step that needs no device, exits 0 without a GPU
#
# Interpreter: $PYTHON, else the python3 on PATH (the GPU image's python3 holds torch, CuPy, numba, pytest...).
# Installs, exactly the same in both modes:
#   - CuPy only when none is importable: the one wheel matching the CUDA major version of the driver (nvidia-smi;
#     without a driver, nvcc's; else 13), cupy-cuda13x or cupy-cuda12x, never both (both write one `cupy/` package),
#     from a wheel directory .whl/ carried to the machine if there is one, else from the package index.
#   - fastopt itself: `pip install --no-deps --no-build-isolation -e .` when the interpreter's setuptools is >= 77
#     (pyproject's `license = "MIT"` string needs it); with an older setuptools that build cannot work and there is
#     no index to fetch a newer one on the GPU machine, so the step is skipped and everything runs from the checkout
#     (PYTHONPATH is always set to it: nothing here needs fastopt installed).
#   - dry run only: where CuPy's bindings cannot load NVRTC, the nvidia-cuda-nvrtc wheel pinned to the local nvcc's
#     major.minor (its PTX must suit that ptxas), else to CuPy's CUDA major version.
# Every step is logged as "==== <step>: ..." with its exit status and seconds; a step whose tool is missing (nvcc,
# compute-sanitizer, ncu) or that needs a device in a dry run says "skipped" and why. Steps have time limits and the
# whole run a budget (FASTOPT_GPU_BUDGET_S, default 480 s): a step that would start past it is skipped as such.
# FASTOPT_GPU_STEPS=bench,ncu-dram runs only the named steps (the installs always run), e.g. to finish a cut run.
# Order on the GPU: device tests, smoke, first step, memcheck, racecheck, generic tests, ncu, fastopt-bench.
# Results (real run): benchmarks/results/<gpu>_<date>.{log,json,md} (log, fastopt-bench), _checks.{json,md} (every
# step), _first_step.json, _ncu.csv and the bench's plots. Dry run: the same under $FASTOPT_RESULTS or a temp dir.
# Exit status: 0 when no step failed (skips are not failures).
set -u -o pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # fastopt and benchmarks/ from this checkout, installed or not
BUDGET=${FASTOPT_GPU_BUDGET_S:-480}

stamp=$(date -u +%Y%m%d-%H%M%S)
if [ "$DRY" -eq 1 ]; then
    results=${FASTOPT_RESULTS:-$(mktemp -d "${TMPDIR:-/tmp}/fastopt-gpu-dry-run.XXXXXX")}
    gpu=dry-run
else
    results=${FASTOPT_RESULTS:-benchmarks/results}
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -cs 'A-Za-z0-9' '-' \
          | sed 's/^-//; s/-$//')
    gpu=${gpu:-unknown-gpu}
fi
mkdir -p "$results"
base="${results}/${gpu}_${stamp}"
steps_tsv="${base}_steps.tsv"
: > "$steps_tsv"
exec > >(tee "${base}.log") 2>&1

failed=()
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$steps_tsv"; }   # name, status, seconds, note
skip() {
    echo
    echo "==== $1: skipped: $2"
    record "$1" skipped 0 "$2"
}
selected() {   # installs always run; other steps only those named in FASTOPT_GPU_STEPS, when it is set
    case "$1" in install-*|nvidia-smi) return 0 ;; esac
    [ -z "${FASTOPT_GPU_STEPS:-}" ] || [[ ",${FASTOPT_GPU_STEPS}," == *",$1,"* ]]
}
# step NAME LIMIT_S CMD...: run CMD with a time limit (and within the budget), log and record how it ended.
step() {
    local name=$1 limit=$2; shift 2
    if ! selected "$name"; then
        skip "$name" "not in FASTOPT_GPU_STEPS"
        return 0
    fi
    local left=$((BUDGET - SECONDS))
    if [ "$left" -le 10 ]; then
        skip "$name" "the run's time budget (${BUDGET} s) is spent"
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo
    echo "==== ${name}: $* (limit ${limit} s)"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    local took=$((SECONDS - t0))
    if [ "$rc" -eq 0 ]; then
        echo "==== ${name}: ok after ${took} s"
        record "$name" ok "$took" ""
    else
        local why="exit ${rc}"
        [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why="timed out after ${limit} s"
        echo "==== ${name}: FAILED (${why}) after ${took} s"
        record "$name" failed "$took" "$why"
        failed+=("${name} (${why})")
    fi
    return "$rc"
}
# optional NAME LIMIT_S CMD...: a dry run's install that needs the package index; where it cannot be had, the steps
# that need it say so and skip: a failure here is recorded as a skip, not a failed step.
optional() {
    local name=$1
    if [ "$DRY" -eq 1 ]; then
        local before=${#failed[@]}
        step "$@" && return 0
        failed=("${failed[@]:0:$before}")
        sed -i "\$s/\tfailed\t/\tskipped\t/" "$steps_tsv"
        echo "==== ${name}: counted as skipped (dry run: no package index?); the steps that need it will say so"
        return 1
    fi
    step "$@"
}
# find_tool NAME: the first executable NAME on PATH, in CUDA's usual places or under .tools/ (carried there).
find_tool() {
    local cand
    for cand in "$(command -v "$1" 2>/dev/null)" "${CUDA_HOME:-/usr/local/cuda}/bin/$1" /usr/local/cuda/bin/"$1" \
                /usr/local/cuda-*/bin/"$1" /opt/nvidia/nsight-compute/*/"$1" .tools/"$1" .tools/*/"$1"; do
        if [ -n "$cand" ] && [ -x "$cand" ]; then echo "$cand"; return 0; fi
    done
    return 1
}
have_cupy() { "$PY" -c "import cupy" >/dev/null 2>&1; }
# The GPU machine is a bare, throwaway image whose python3 may be an "externally managed" system interpreter (PEP 668).
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1

echo "fastopt GPU check$([ "$DRY" -eq 1 ] && echo ' (DRY RUN: no device needed)'), $(date -u), commit" \
     "$(git rev-parse --short HEAD 2>/dev/null || echo '?'), python $("$PY" -c 'import sys; print(sys.version.split()[0])') ($PY)"

# ---- 1. the machine -------------------------------------------------------------------------------------------------
if [ "$DRY" -eq 1 ]; then
    skip nvidia-smi "dry run"
else
    step nvidia-smi 30 nvidia-smi
fi

# ---- 2. installs (the same in both modes) ---------------------------------------------------------------------------
cuda_major=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n 1)
nvcc=$(find_tool nvcc || true)
nvcc_release=""
[ -n "$nvcc" ] && nvcc_release=$("$nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
[ -z "$cuda_major" ] && [ -n "$nvcc_release" ] && cuda_major=${nvcc_release%%.*}
cuda_major=${cuda_major:-13}
[ "$cuda_major" -ge 13 ] && cupy_pkg=cupy-cuda13x || cupy_pkg=cupy-cuda12x
if have_cupy; then
    skip install-cupy "CuPy $("$PY" -c 'import cupy; print(cupy.__version__)') is already importable"
elif [ -d .whl ]; then
    step install-cupy 300 "$PY" -m pip install -q --no-index --find-links .whl "${cupy_pkg}>=14.1"
else
    optional install-cupy 300 "$PY" -m pip install -q --retries 1 --timeout 20 "${cupy_pkg}>=14.1"
fi

setuptools_version=$("$PY" -c "import setuptools; print(setuptools.__version__)" 2>/dev/null || echo "(none)")
if "$PY" -c "import sys, setuptools; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" 2>/dev/null; then
    step install-fastopt 180 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
else
    skip install-fastopt "setuptools ${setuptools_version} < 77 cannot build pyproject's license = \"MIT\" without" \
        "build isolation (no index to fetch a newer one): running from the checkout through PYTHONPATH"
fi

if [ "$DRY" -eq 1 ] && ! "$PY" -c "import sys; from fastopt import cuda_build; sys.exit(cuda_build.nvrtc_version() is None)" 2>/dev/null; then
    # NVRTC of CuPy's CUDA major version (the library CuPy loads), at nvcc's minor version when nvcc has that major.
    cupy_major=$("$PY" -c "import cupy; print(cupy.cuda.runtime.runtimeGetVersion() // 1000)" 2>/dev/null \
                 || echo "$cuda_major")
    if [ "${nvcc_release%%.*}" = "$cupy_major" ]; then nvrtc_pin="${nvcc_release}.*"; else nvrtc_pin="${cupy_major}.*"; fi
    [ "$cupy_major" -ge 13 ] && nvrtc_pkg=nvidia-cuda-nvrtc || nvrtc_pkg=nvidia-cuda-nvrtc-cu12
    optional install-nvrtc 300 "$PY" -m pip install -q --retries 1 --timeout 20 "${nvrtc_pkg}==${nvrtc_pin}"
fi

# ---- 3. what there is: versions, CuPy, the kernels through nvcc and through NVRTC -------------------------------------
if ! have_cupy; then
    skip cupy "CuPy cannot be imported by $PY (see install-cupy)"
else step cupy 60 "$PY" -c "import cupy; from fastopt import cuda_build; from fastopt.backends import cuda; \
print('CuPy', cupy.__version__, '(disk cache for name expressions:', cuda.cupy_caches_on_disk(cupy), ')', \
'NVRTC', cuda_build.nvrtc_version())"
fi
step info 120 "$PY" -m fastopt info
if [ -n "$nvcc" ]; then
    step check-kernels 240 env NVCC="$nvcc" "$PY" -m fastopt check-kernels --arch sm_90   # H100/H200; CI does sm_80 too
else
    skip check-kernels "no nvcc on this machine (CuPy compiles through NVRTC: check-nvrtc)"
fi
if "$PY" -c "import sys; from fastopt import cuda_build; sys.exit(cuda_build.nvrtc_version() is None)" 2>/dev/null; then
    step check-nvrtc 300 "$PY" -m fastopt check-nvrtc --arch sm_90
else
    skip check-nvrtc "CuPy or its NVRTC library cannot be loaded by $PY (see install-cupy / install-nvrtc)"
fi

# ---- 4. tests and runs on the device ----------------------------------------------------------------------------------
# tests/test_cuda_host.py is CPU-only (CI runs it); the GPU run covers the device tests and the generic tests.
device_tests=(tests/test_cuda_device.py tests/test_cuda_build.py
              tests/test_distributed.py::test_gpu_nccl_world_of_one_matches_plain_optimizer)
generic_tests=(tests --ignore=tests/test_cuda_host.py --ignore=tests/test_cuda_device.py --ignore=tests/test_cuda_build.py)
sanitizer=$(find_tool compute-sanitizer || true)
ncu=$(find_tool ncu || true)
if [ "$DRY" -eq 1 ]; then
    step collect-cuda-tests 120 "$PY" -m pytest --collect-only -q "${device_tests[@]}"
    step collect-generic-tests 180 env FASTOPT_TEST_BACKENDS=cuda "$PY" -m pytest --collect-only -q "${generic_tests[@]}"
    step bench-imports 120 "$PY" -c "import importlib, pkgutil, fastopt.bench as b; \
[importlib.import_module(m.name) for m in pkgutil.walk_packages(b.__path__, 'fastopt.bench.')]; \
import fastopt.__main__, benchmarks.convergence; print('fastopt.bench and its modules import')"
    step bench-cli 60 "$PY" -m fastopt.bench.cli --help
    step phases-cpu 240 "$PY" benchmarks/phases_speed.py --device cpu --elements 1000000 --repeats 2
    for tool in smoke first-step memcheck racecheck ncu-dram bench phases generic-tests cuda-tests; do
        skip "$tool" "dry run (needs a device)"
    done
    echo "tools for the real run: compute-sanitizer ${sanitizer:-ABSENT (memcheck/racecheck will be skipped)}," \
         "ncu ${ncu:-ABSENT (DRAM throughput will be skipped)}, nvcc ${nvcc:-absent}"
else
    step cuda-tests 150 "$PY" -m pytest "${device_tests[@]}" -q -rs --maxfail=20
    step smoke 90 "$PY" -m fastopt smoke              # every family, dtype and path; warms the kernel cache
    # The first step in a new process with the kernel cache warm (the runs above filled it).
    step first-step 60 sh -c "\"$PY\" -m fastopt first-step > \"${base}_first_step.json\" && cat \"${base}_first_step.json\""
    if [ -n "$sanitizer" ]; then
        # Every family, flat and table, in float32, float64 and bfloat16 storage (vector widths 4 and 2, half loads).
        for tool in memcheck racecheck; do
            step "$tool" 120 "$sanitizer" --tool "$tool" --error-exitcode 1 "$PY" -m fastopt smoke --steps 1 \
                --no-pool --dtype float32 --dtype float64 --dtype bfloat16
        done
    else
        skip memcheck "compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda, .tools/)"
        skip racecheck "compute-sanitizer not found"
    fi
    step generic-tests 180 env FASTOPT_TEST_BACKENDS=cuda "$PY" -m pytest "${generic_tests[@]}" -q -rs
    if [ -n "$ncu" ]; then
        # Adam, float32, 4 tensors of 16M: the flat and the table kernel, DRAM bytes and % of peak per launch.
        step ncu-dram 120 "$ncu" --csv --log-file "${base}_ncu.csv" -k regex:fo_adam_ --metrics \
            gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \
            "$PY" -m fastopt smoke --family adam --dtype float32 --sizes 16777216,16777216,16777216,16777216 --steps 1
    else
        skip ncu-dram "Nsight Compute (ncu) not found (PATH, CUDA_HOME, /opt/nvidia/nsight-compute, .tools/)"
    fi
    step bench 240 "$PY" -m fastopt.bench.cli --backends cuda --json "${base}.json" --markdown "${base}.md" \
        --plots "$results" --plot-prefix "${gpu}_${stamp}_" --no-progress
    # Clipped Adam, LAMB and LARS (reductions, then the update) against their roofline and torch (issue 12.8).
    step phases 150 "$PY" benchmarks/phases_speed.py --device cuda --markdown "${base}_phases.md"
fi

# ---- 5. the summary ---------------------------------------------------------------------------------------------------
"$PY" - "$steps_tsv" "$base" "$DRY" <<'EOF'
import json, sys
tsv, base, dry = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
rows = [dict(zip(("step", "status", "seconds", "note"), line.rstrip("\n").split("\t")))
        for line in open(tsv) if line.strip()]
for row in rows:
    row["seconds"] = int(row["seconds"])
json.dump({"dry_run": dry, "steps": rows}, open(f"{base}_checks.json", "w"), indent=1)
with open(f"{base}_checks.md", "w") as md:
    md.write(f"# fastopt GPU check{' (dry run)' if dry else ''}\n\n| step | status | s | note |\n| --- | --- | ---: | --- |\n")
    md.writelines(f"| {r['step']} | {r['status']} | {r['seconds']} | {r['note']} |\n" for r in rows)
EOF
rm -f "$steps_tsv"

echo
if [ ${#failed[@]} -eq 0 ]; then
    echo "GPU check$([ "$DRY" -eq 1 ] && echo ' dry run'): no step failed; results in ${base}_checks.{json,md}, log ${base}.log"
    exit 0
fi
echo "GPU check$([ "$DRY" -eq 1 ] && echo ' dry run'): FAILED steps: ${failed[*]}; log ${base}.log"
exit 1
