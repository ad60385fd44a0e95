"""The CUDA kernels of the Llama-family ops (rmsnorm_rows, rmsnorm_bwd, rope_rows, swiglu,
swiglu_bwd) executed on the CPU through the fiber harness (tests/cuda_sim), driven by qkv._cuda's
own Python code, against the NumPy oracle: float32, float16, bfloat16, sizes off the block sizes,
strided and in-place rope, adversarial values; the dweight reduction gives the same bits under
every fiber schedule. Skipped when g++ or the CUDA headers are missing.
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_sim"))
import qkv._cuda as qc  # noqa: E402
from qkv import _reference as ref  # noqa: E402
from qkv import _rope  # noqa: E402

from cases import DTYPES, _dt, check, rand  # noqa: E402
from cases_llama import LLAMA3  # noqa: E402
from harness import pytestmark, ran, sim, under_every_schedule  # noqa: E402,F401  (the skip, the fiber runtime fixture, checks)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(sim, dtype):
    rng = np.random.default_rng(1)
    x = rand(rng, (37, 97), dtype) * np.asarray(3, _dt(dtype))
    w, dy = rand(rng, (97,), dtype), rand(rng, (37, 97), dtype)
    for weight in (w, None):
        n = len(sim.launches)
        y, rstd = qc.rms_norm(x, weight, 1e-6, return_stats=True)
        ran(sim, n, "rmsnorm_rows")
        check(y, ref.rms_norm(x, weight, 1e-6), dtype, "y")
        assert rstd.dtype == np.float32 and rstd.shape == (37,)
        check(rstd, ref.rms_norm(x, weight, 1e-6, return_stats=True)[1], "float32", "rstd")
        for stats in (rstd, None):
            n = len(sim.launches)
            got = qc.rms_norm_backward(dy, x, weight, stats, 1e-6)
            ran(sim, n, "rmsnorm_bwd", *(["sum_partials"] if weight is not None else []))
            for name, a, e in zip(("dx", "dweight"), got, ref.rms_norm_backward(dy, x, weight, stats, 1e-6)):
                assert (a is None) == (e is None)
                if a is not None:
                    assert a.dtype == x.dtype
                    check(a, e, dtype, f"{name} weight={weight is not None} stats={stats is not None}")
    big = rand(rng, (40, 1000), dtype)  # several warps per row, several rows per chunk
    check(qc.rms_norm(big, None, 1e-6), ref.rms_norm(big, None, 1e-6), dtype, "wide")
    under_every_schedule(sim, lambda: qc.rms_norm_backward(dy, x, w, None, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scaling", [None, LLAMA3], ids=["plain", "llama3"])
def test_rope(sim, dtype, scaling):
    rng = np.random.default_rng(2)
    for (B, L, H, D) in ((2, 3, 2, 64), (1, 4, 3, 6), (3, 2, 5, 128), (1, 1, 1, 2)):
        x = rand(rng, (B, L, H, D), dtype)
        pos = rng.integers(0, 2**31 - 1, size=(B, L))
        pos[0, 0] = 0
        inv = _rope.inv_freq(D, 500000.0, _rope.check_scaling("t", scaling))
        n = len(sim.launches)
        y = qc.rope(x, pos, inv)
        ran(sim, n, "rope_rows")
        check(y, ref.rope(x, pos, inv), dtype, f"rope {x.shape}")
        check(qc.rope(x, pos, inv, inverse=True), ref.rope(x, pos, inv, inverse=True), dtype, "inverse")
        check(qc.rope(x, pos[0], inv), ref.rope(x, pos[0], inv), dtype, "(L,) positions")
        np.testing.assert_array_equal(np.asarray(y[0, 0], np.float32), np.asarray(x[0, 0], np.float32))  # pos 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_in_place_strided(sim, dtype):
    rng = np.random.default_rng(3)
    buf = rand(rng, (2, 3, 12, 16), dtype)
    before = buf.copy()
    pos = rng.integers(0, 1000, size=(2, 3))
    inv = _rope.inv_freq(16, 10000.0)
    q = buf[:, :, 4:8]
    assert qc.rope(q, pos, inv, out=q) is q
    check(buf[:, :, 4:8], ref.rope(before[:, :, 4:8], pos, inv), dtype, "in place")
    assert buf[:, :, :4].tobytes() == before[:, :, :4].tobytes()
    assert buf[:, :, 8:].tobytes() == before[:, :, 8:].tobytes()
    with pytest.raises(ValueError, match="head dims up to 512"):
        qc.rope(rand(rng, (1, 1, 1, 514), dtype), np.zeros(1, np.int64), _rope.inv_freq(514, 10000.0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu(sim, dtype):
    rng = np.random.default_rng(4)
    g = np.concatenate([np.linspace(-20, 20, 301), [0.0, -1.2784645, 1e4, -1e4, np.inf, -np.inf, np.nan]])
    g = g.astype(_dt(dtype))
    u, dy = rand(rng, g.shape, dtype), rand(rng, g.shape, dtype)
    n = len(sim.launches)
    y = qc.swiglu(g, u)
    dg, du = qc.swiglu_backward(dy, g, u)
    ran(sim, n, "swiglu", "swiglu_bwd")
    check(y, ref.swiglu(g, u), dtype, "swiglu")
    rdg, rdu = ref.swiglu_backward(dy, g, u)
    check(dg, rdg, dtype, "dgate")
    check(du, rdu, dtype, "dup")
    x, W, b = rand(rng, (3, 5, 24), dtype), rand(rng, (24, 2 * 33), dtype), rand(rng, (66,), dtype)
    for weight in (W, np.asfortranarray(W)):
        n = len(sim.launches)
        out, pre = qc.linear(x, weight, b, "swiglu", return_preact=True)
        ran(sim, n, "bias_act", "swiglu")
        assert out.shape == (3, 5, 33) and pre.shape == (3, 5, 66)
        check(pre, ref.linear(x, weight, b), dtype, "preact")
        check(out, ref.swiglu(pre[..., :33], pre[..., 33:]), dtype, "linear swiglu")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_bodies_on_the_harness(sim, monkeypatch, dtype):
    """The bodies of test_cuda_gpu_llama_ops.py, small, with NumPy arrays standing in for CuPy ones."""
    from cases_llama import BODIES

    monkeypatch.setattr(qc, "available", lambda: (True, None))
    monkeypatch.setattr(qc, "ARRAY_KIND", "numpy")
    for body in BODIES:
        body(np.asarray, np.asarray, dtype, big=False)
