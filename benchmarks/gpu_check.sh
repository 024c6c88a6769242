#!/usr/bin/env bash
# The one command a machine with a GPU runs to check and measure the cuda backend:
#
#     bash benchmarks/gpu_check.sh            (from anywhere; it works in the repository root)
#
# It installs nothing from the network: fastopt itself in editable mode without dependencies, and CuPy only from a
# local wheel directory .whl/ if one was carried there (pip --no-index). It assumes CuPy (cupy-cuda12x or -13x),
# NumPy, Numba and pytest are already installed, and torch optionally (the DLPack test and the torch baselines).
# Steps, each logged, none stopping the others:
#   1. nvidia-smi, CuPy's view of the device, python -m fastopt info
#   2. python -m fastopt check-kernels        every instantiation through nvcc/ptxas (where nvcc exists)
#   3. pytest tests/test_cuda_device.py tests/test_cuda_build.py tests/test_cuda_host.py
#   4. FASTOPT_TEST_BACKENDS=cuda pytest tests   the generic tests on the cuda backend only (conftest.py reads it)
#   5. fastopt-bench --backends cuda --json/--markdown benchmarks/results/<gpu>_<date>.{json,md}
# Everything printed also goes to benchmarks/results/<gpu>_<date>.log. Exit status: 0 when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}  # the GPU image's python3 holds torch and CuPy

mkdir -p benchmarks/results
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -cs 'A-Za-z0-9' '-' | sed 's/^-//; s/-$//')
gpu=${gpu:-unknown-gpu}
stamp=$(date -u +%Y%m%d-%H%M%S)
base="benchmarks/results/${gpu}_${stamp}"
exec > >(tee "${base}.log") 2>&1

failed=()
step() {
    local name=$1; shift
    echo
    echo "==== ${name}: $*"
    local t0=$SECONDS
    "$@"
    local rc=$?
    echo "==== ${name}: exit ${rc} after $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || failed+=("${name} (exit ${rc})")
}

echo "fastopt GPU check, $(date -u), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
step nvidia-smi nvidia-smi
if [ -d .whl ] && ! "$PY" -c "import cupy" 2>/dev/null; then
    step install-cupy "$PY" -m pip install -q --no-index --find-links .whl cupy-cuda13x cupy-cuda12x
fi
step install "$PY" -m pip install -q --no-deps --no-build-isolation -e .
step cupy "$PY" -c "import cupy; print('cupy', cupy.__version__); cupy.show_config()"
step info "$PY" -m fastopt info
if command -v nvcc >/dev/null 2>&1; then
    step check-kernels "$PY" -m fastopt check-kernels
else
    echo "==== check-kernels: skipped (no nvcc on this machine; CuPy compiles through NVRTC)"
fi
step cuda-tests "$PY" -m pytest tests/test_cuda_device.py tests/test_cuda_build.py tests/test_cuda_host.py -q -rs
step generic-tests env FASTOPT_TEST_BACKENDS=cuda "$PY" -m pytest tests -q -rs
# fastopt-bench through the same interpreter as the tests (a console script on PATH may belong to another Python).
step bench "$PY" -m fastopt.bench.cli --backends cuda --json "${base}.json" --markdown "${base}.md" \
    --plots benchmarks/results --plot-prefix "${gpu}_${stamp}_" --no-progress

echo
if [ ${#failed[@]} -eq 0 ]; then
    echo "GPU check: all steps passed; results in ${base}.{log,json,md}"
    exit 0
fi
echo "GPU check: FAILED steps: ${failed[*]}; log in ${base}.log"
exit 1
