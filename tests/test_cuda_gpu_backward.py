"""The cuda backend's backward ops on a real GPU, at training sizes (GPT-2 small widths, a 50257
vocabulary): the shared bodies of tests/cuda_sim/cases_backward.py with CuPy arrays, against the
NumPy oracle, and the same bits on a second run. The same bodies run on the CPU harness at small
sizes (test_cuda_sim_backward.py). Marked ``gpu``: skipped when CuPy or a device is missing."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_sim"))
from cases import DTYPES  # noqa: E402
from cases_backward import BODIES  # noqa: E402

pytestmark = pytest.mark.gpu
cp = pytest.importorskip("cupy")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("body", BODIES, ids=lambda f: f.__name__)
def test_backward_on_gpu(body, dtype):
    body(cp.asarray, cp.asnumpy, dtype, big=True)
    cp.cuda.Device().synchronize()
