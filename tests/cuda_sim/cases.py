"""Shared by test_cuda_sim.py (kernels on the CPU) and test_cuda_gpu.py (on a GPU): dtypes,
tolerances against the NumPy oracle, random inputs, the mma probe's case."""

import numpy as np

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # bfloat16 cases need ml_dtypes
    BF16 = None

DTYPES = ["float32", "float16"] + (["bfloat16"] if BF16 is not None else [])
# |actual - oracle| <= TOL * (1 + |oracle|max): float16/bfloat16 include rounding P to 16 bits before P V
TOL = {"float32": 3e-6, "float16": 2e-3, "bfloat16": 1.6e-2}


def _dt(name):
    return BF16 if name == "bfloat16" else np.dtype(name)


def check(actual, expected, dtype_name, what=""):
    a = np.asarray(actual).astype(np.float64)
    e = np.asarray(expected).astype(np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    assert np.array_equal(np.isnan(a), np.isnan(e)), f"{what}: NaN positions differ"
    fin = np.isfinite(e)
    assert np.array_equal(a[~fin & ~np.isnan(e)], e[~fin & ~np.isnan(e)]), f"{what}: infinities differ"
    scale = 1 + (np.abs(e[fin]).max() if fin.any() else 0)
    err = np.abs(a[fin] - e[fin]).max() if fin.any() else 0.0
    assert err <= TOL[dtype_name] * scale, f"{what}: max err {err:.3e} > {TOL[dtype_name] * scale:.3e}"


def rand(rng, shape, dtype_name, lo=-2, hi=2):
    return rng.uniform(lo, hi, size=shape).astype(_dt(dtype_name))


def mma_probe_case(dtype_name, seed=0):
    """Inputs of tests/cuda_sim/mma_probe.cu and the two products it must return (float64)."""
    rng = np.random.default_rng(seed)
    a, bn, bk = (rng.integers(-8, 9, size=(16, 16)).astype(_dt(dtype_name)) for _ in range(3))  # exact in 16 bits
    return (a, bn, bk), (a.astype(np.float64) @ bn.astype(np.float64).T, a.astype(np.float64) @ bk.astype(np.float64))
