"""The cuda backend on a real GPU: dispatch with CuPy arrays, every op against the NumPy oracle,
each attention kernel forced in turn, and the real ldmatrix / mma.sync against the layouts the
CPU harness emulates. Marked ``gpu``: skipped when CuPy or a device is missing."""

import os
import sys

import numpy as np
import pytest

import qkv
import qkv._cuda as qc
from qkv import _reference as ref

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_sim"))
from cases import DTYPES, _dt, check, mma_probe_case, rand  # noqa: E402

pytestmark = pytest.mark.gpu
cp = pytest.importorskip("cupy")


@pytest.fixture(autouse=True)
def _auto_path():
    yield
    qc.set_path("auto")


def dev(a):
    return None if a is None else cp.asarray(a)


def host(a):
    return cp.asnumpy(a)


def test_backend_dispatch():
    x = cp.asarray(np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32))
    y = qkv.softmax(x)
    assert isinstance(y, cp.ndarray)
    assert qkv.backends()["cuda"]["available"]
    with pytest.raises(TypeError, match="different devices"):
        qkv.softmax(x, mask=np.ones((4, 10), bool))
    with qkv.use_backend("cuda"):
        check(host(qkv.softmax(x)), ref.softmax(host(x)), "float32")
    with pytest.raises(TypeError):
        with qkv.use_backend("cuda"):
            qkv.softmax(host(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_ops(dtype):
    rng = np.random.default_rng(1)
    x = rand(rng, (3, 5, 333), dtype, -10, 10)
    mask = rng.random((3, 1, 333)) < 0.6
    for m in (None, mask):
        for causal in (False, True, "top_left"):
            y = qkv.softmax(dev(x), mask=dev(m), causal=causal, scale=0.5)
            e = ref.softmax(x, mask=m, causal={False: None, True: "bottom_right"}.get(causal, causal), scale=0.5)
            check(host(y), e, dtype, f"softmax {causal}")
    w, b = rand(rng, (333,), dtype), rand(rng, (333,), dtype)
    check(host(qkv.layer_norm(dev(x), dev(w), dev(b))), ref.layer_norm(x, w, b), dtype, "layer_norm")
    for approx in ("tanh", "none"):
        check(host(qkv.gelu(dev(x), approx)), ref.gelu(x, approx), dtype, "gelu")


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_mlp(dtype):
    rng = np.random.default_rng(2)
    x, w1, b1 = rand(rng, (2, 7, 64), dtype), rand(rng, (64, 128), dtype, -0.2, 0.2), rand(rng, (128,), dtype)
    w2, b2 = rand(rng, (128, 64), dtype, -0.2, 0.2), rand(rng, (64,), dtype)
    tol = "bfloat16" if dtype != "float32" else "float16"  # cuBLAS accumulation order / TF32-free fp32
    for act in (None, "gelu_tanh", "gelu", "relu"):
        check(host(qkv.linear(dev(x), dev(w1), dev(b1), act)), ref.linear(x, w1, b1, act), tol, f"linear {act}")
    y = qkv.mlp(dev(x), dev(w1), dev(b1), dev(w2), dev(b2))
    e = ref.linear(ref.linear(x, w1, b1, "gelu_tanh"), w2, b2)
    check(host(y), e, tol, "mlp")


CASES = [  # B, Hq, Hkv, Lq, Lk, D, Dv
    (1, 4, 4, 300, 300, 64, 64), (2, 8, 2, 129, 1000, 128, 128), (1, 4, 1, 1, 4099, 128, 128),
    (2, 2, 2, 77, 33, 64, 64), (1, 2, 1, 50, 70, 96, 80),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ["auto", "mma", "rows", "split"])
@pytest.mark.parametrize("causal", [False, True, "top_left"])
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_attention(dtype, path, causal, shape):
    B, Hq, Hkv, Lq, Lk, D, Dv = shape
    rng = np.random.default_rng(hash((dtype, path, causal, shape)) % 2**32)
    q, k, v = rand(rng, (B, Hq, Lq, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype), rand(rng, (B, Hkv, Lk, Dv), dtype)
    qc.set_path(path)
    o, lse = qkv.attention(dev(q), dev(k), dev(v), causal=causal, return_lse=True)
    rc = {False: None, True: "bottom_right"}.get(causal, causal)
    eo, el = ref.attention(q, k, v, 1 / np.sqrt(D), causal=rc, return_lse=True)
    check(host(o), eo, dtype, "out")
    check(host(lse), el, "float32" if dtype == "float32" else "float16", "lse")


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_masks_kv_lengths_nan(dtype):
    rng = np.random.default_rng(3)
    B, Hq, Hkv, Lq, Lk, D = 3, 4, 2, 100, 200, 64
    q, k, v = rand(rng, (B, Hq, Lq, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype)
    kvl = np.array([200, 0, 150])
    k[2, :, 150:] = np.nan
    v[2, :, 150:] = np.inf
    bmask = rng.random((B, 1, Lq, Lk)) < 0.8
    bmask[0, 0, 7] = False
    amask = np.where(rng.random((1, Hq, 1, Lk)) < 0.9, rng.normal(size=(1, Hq, 1, Lk)), -np.inf).astype(np.float32)
    for mask in (bmask, amask):
        for causal in (False, True):
            q0, k0, v0 = q.copy(), k.copy(), v.copy()
            o, lse, w = qkv.attention(dev(q), dev(k), dev(v), mask=dev(mask), kv_lengths=dev(kvl), causal=causal,
                                      return_lse=True, return_weights=True)
            eo, el, ew = ref.attention(q, k, v, 1 / 8, mask=mask, kv_lengths=kvl, causal="bottom_right" if causal else None,
                                       return_lse=True, return_weights=True)
            check(host(o), eo, dtype, "out")
            check(host(lse), el, "float32" if dtype == "float32" else "float16", "lse")
            check(host(w), ew, dtype, "weights")
            for a0, a in ((q0, q), (k0, k), (v0, v)):
                assert np.array_equal(a0, a, equal_nan=True)  # inputs untouched


def test_attention_on_current_stream_and_views():
    rng = np.random.default_rng(4)
    x = rand(rng, (2, 256, 3 * 8 * 64), "float16").reshape(2, 256, 3, 8, 64)
    xd = dev(x)
    q, k, v = (xd[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, H, L, D) views, no copy
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        o = qkv.attention(q, k, v, causal=True)
    s.synchronize()
    hq, hk, hv = (x[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    check(host(o), ref.attention(hq, hk, hv, 1 / 8, causal="bottom_right"), "float16", "views on a stream")


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != "float32"])
def test_mma_emulation_matches_hardware(dtype):
    """tests/cuda_sim/mma_probe.cu on the real ldmatrix / mma.sync: A @ B exactly, as the emulators give."""
    import simbuild

    (a, bn, bk), (e_qk, e_pv) = mma_probe_case(dtype)
    name = f"mma_probe<{qc.kernels.CTYPES[dtype]}>"
    mod = cp.RawModule(code=simbuild.probe_source("mma_probe.cu"), options=qc.kernels.OPTIONS, name_expressions=[name])
    d_qk, d_pv = cp.full((16, 16), np.nan, np.float32), cp.full((16, 16), np.nan, np.float32)
    mod.get_function(name)((1,), (32,), (dev(a), dev(bn), dev(bk), d_qk, d_pv))
    np.testing.assert_array_equal(host(d_qk), e_qk)
    np.testing.assert_array_equal(host(d_pv), e_pv)


def test_embedding_gather():
    rng = np.random.default_rng(5)
    table, pos = rand(rng, (100, 32), "float16"), rand(rng, (64, 32), "float16")
    ids = rng.integers(0, 100, size=(3, 10))
    y = qc.embedding(dev(ids), dev(table), dev(pos), pos0=4)
    e = (table[ids].astype(np.float64) + pos[4:14].astype(np.float64)).astype(np.float16)
    check(host(y), e, "float16", "embedding")
    assert _dt("float16") == y.dtype
