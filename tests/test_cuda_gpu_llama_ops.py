"""The cuda backend's Llama-family ops (rms_norm, rope, swiglu, linear "swiglu" and their backward)
on a real GPU at model sizes (4096 wide, 32 heads of 128, SwiGLU 8192), against the NumPy oracle,
and the same bits on a second run: the shared bodies of tests/cuda_sim/cases_llama.py with CuPy
arrays. The same bodies run on the CPU harness at small sizes (test_cuda_sim_llama_ops.py).
Marked ``gpu``: skipped when CuPy or a device is missing."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_sim"))
from cases import DTYPES  # noqa: E402
from cases_llama import BODIES  # noqa: E402

pytestmark = pytest.mark.gpu
cp = pytest.importorskip("cupy")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("body", BODIES, ids=lambda f: f.__name__)
def test_llama_ops_on_gpu(body, dtype):
    body(cp.asarray, cp.asnumpy, dtype, big=True)
    cp.cuda.Device().synchronize()
