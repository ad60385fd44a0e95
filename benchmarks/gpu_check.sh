#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (no network needed): install qkv in place, run every gpu-marked test
# file (every op and its backward vs the oracle, the real mma.sync/ldmatrix vs the emulated layouts, hooks,
# the Llama ops), then benchmark attention forward and backward. Results: benchmarks/results/gpu_attention_<device>.json (+ $OUT if set).
# About 6 minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
results=benchmarks/results
mkdir -p "$results"
log() { echo "== $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$results/gpu_info.txt"
log "python packages"
$PY -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)" || {
    echo "CuPy is missing; trying an offline install"; $PY -m pip install --no-index "cupy-cuda13x==14.2.*" ml_dtypes || exit 1; }
$PY -c "import ml_dtypes" 2>/dev/null || $PY -m pip install --no-index ml_dtypes || true
log "build + install (offline)"
$PY -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3 || $PY setup.py -q build_ext --inplace
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
log "compile every family on this device"
t0=$(date +%s)
$PY -c "from qkv._cuda import loader; loader.warm_up(); print('compiled')" 2>&1 | tail -20
echo "compile: $(( $(date +%s) - t0 )) s"
log "gpu tests"
timeout 300 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda_gpu*.py 2>&1 | tail -40 | tee "$results/gpu_tests.txt"
log "benchmark"
timeout 300 $PY benchmarks/gpu_attention.py --budget ${QKV_BENCH_BUDGET:-200} 2>&1 | tail -80 | tee "$results/gpu_bench.txt"
if [ -n "${OUT:-}" ]; then cp "$results"/gpu_* "$OUT"/ 2>/dev/null || true; fi
