#!/usr/bin/env bash
# CUDA backend without a GPU: CuPy + NVRTC 13.0 (the H200's CUDA), then the NVRTC compile gate for
# every .cu (sm_80, sm_90; warnings, spills and local memory fail) and the CPU harness that runs
# the real kernels against the oracle. The gpu-marked tests skip here and run on a GPU.
set -euo pipefail
python -m pip install -q "cupy-cuda13x==14.2.*" "nvidia-cuda-nvrtc==13.0.*" ml_dtypes \
    nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm  # SASS checks: HMMA/LDSM/LDGSTS present, no LDL/STL
# headers for NVRTC (cuda_fp16.h, cuda_bf16.h) and the CPU harness: the system toolkit, else the wheel
# The harness tests need no CuPy: README's test command already ran them where the system toolkit has
# the headers; here they run only when the headers came from the wheel just now.
sim=()
if ! ls "${CUDA_HOME:-/usr/local/cuda}/include/cuda_fp16.h" >/dev/null 2>&1; then
    python -m pip install -q "nvidia-cuda-runtime==13.0.*"
    sim=(tests/test_cuda_sim*.py)
fi
python tools/check_kernels.py --sass require
python -m pytest -q "${sim[@]}" tests/test_cuda_gpu*.py
