"""The real CUDA kernels (src/qkv/_cuda/*.cu) executed on the CPU, against the NumPy oracle.

tests/cuda_sim compiles every .cu file with g++ under a small fiber-per-thread CUDA shim (real
barriers and warp shuffles; cp.async, ldmatrix and mma.sync emulated from the PTX ISA layouts)
and plugs it into qkv._cuda in place of CuPy, so each test runs the backend's own Python code and
the kernels it launches. Sizes are tiny: tails that are not a multiple of the tile, both causal
alignments, masks, kv_lengths, GQA/MQA, float16/bfloat16 rounding, fully masked rows.
Skipped when g++ or the CUDA headers are missing.
"""

import itertools
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_sim"))
import simbuild  # noqa: E402

import qkv._cuda as qc  # noqa: E402
from qkv import _reference as ref  # noqa: E402

from cases import BF16, DTYPES, TOL, _dt, check, mma_probe_case, rand  # noqa: E402,F401
from harness import pytestmark, sim  # noqa: E402,F401  (the skip and the fiber runtime fixture)
from test_numerics import alibi, attention_bound  # noqa: E402  (README's accuracy bound, one place)


@pytest.fixture
def path(request):
    yield
    qc.set_path("auto")


def run_attention(sim, q, k, v, kernel, **kw):
    """The backend's attention with ``kernel`` forced; asserts that kernel ran. Returns (out, lse)."""
    qc.set_path({"attn_mma": "mma", "attn_rows": "rows", "attn_combine": "split"}[kernel])
    n = len(sim.launches)
    o, lse = qc.attention(q, k, v, kw.pop("scale", 1 / np.sqrt(q.shape[-1])), return_lse=True, **kw)
    names = [name for _, name, *_ in sim.launches[n:]]
    assert any(name.startswith(kernel + "<") for name in names), names
    return o, lse


ATTN_SHAPES = [  # B, Hq, Hkv, Lq, Lk, D, Dv
    (1, 2, 2, 37, 70, 64, 64),    # tails on both axes
    (2, 4, 2, 20, 129, 64, 64),   # GQA, Lk one past two tiles
    (1, 3, 1, 65, 65, 128, 128),  # MQA, square, one past a 64-query tile
    (1, 2, 1, 90, 33, 64, 64),    # more queries than keys (bottom-right rows with no key)
]


def _contract_cases():
    """dtype x kernel x causal, each on two of ATTN_SHAPES (rotating, so every shape meets every option)."""
    out = []
    for i, dtype in enumerate(DTYPES):
        for j, kernel in enumerate(["attn_mma", "attn_rows", "attn_combine"]):
            for c, causal in enumerate([None, "bottom_right", "top_left"]):
                for r in range(2):
                    shape = ATTN_SHAPES[(i + j + c + 2 * r) % len(ATTN_SHAPES)]
                    out.append(pytest.param(dtype, kernel, causal, shape,
                                            id=f"{dtype}-{kernel}-{causal}-{'x'.join(map(str, shape))}"))
    return out


@pytest.mark.parametrize("dtype,kernel,causal,shape", _contract_cases())
def test_attention_contract(sim, path, dtype, kernel, causal, shape):
    if kernel == "attn_mma" and dtype == "float32":
        pytest.skip("the tensor-core kernel takes float16/bfloat16")
    B, Hq, Hkv, Lq, Lk, D, Dv = shape
    if kernel == "attn_combine":
        Lq = min(Lq, 3)  # split-KV decode: a few queries against the whole cache
    rng = np.random.default_rng(hash((dtype, kernel, causal, shape)) % 2**32)
    q, k, v = rand(rng, (B, Hq, Lq, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype), rand(rng, (B, Hkv, Lk, Dv), dtype)
    o, lse = run_attention(sim, q, k, v, kernel, causal=causal)
    eo, el = ref.attention(q, k, v, 1 / np.sqrt(D), causal=causal, return_lse=True)
    check(o, eo, dtype, "out")
    check(lse, el, "float32" if dtype == "float32" else "float16", "lse")
    if causal == "bottom_right" and Lq > Lk:  # rows that see no key: exactly zero, lse -inf
        assert not np.asarray(o[:, :, : Lq - Lk].astype(np.float32)).any()
        assert np.all(lse[:, :, : Lq - Lk] == -np.inf)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["attn_mma", "attn_rows", "attn_combine"])
def test_attention_masks_and_kv_lengths(sim, path, dtype, kernel):
    if kernel == "attn_mma" and dtype == "float32":
        pytest.skip("the tensor-core kernel takes float16/bfloat16")
    rng = np.random.default_rng(7)
    B, Hq, Hkv, Lq, Lk, D = 3, 2, 1, 19 if kernel != "attn_combine" else 2, 75, 64
    q, k, v = rand(rng, (B, Hq, Lq, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype)
    kvl = np.array([75, 0, 40])  # full, empty (rows of zeros), partial
    bool_mask = rng.random((B, 1, Lq, Lk)) < 0.7  # broadcast over heads
    bool_mask[0, 0, 1] = False                    # a fully masked row
    add_mask = np.where(rng.random((1, Hq, 1, Lk)) < 0.8, rng.normal(size=(1, Hq, 1, Lk)), -np.inf).astype(q.dtype)
    for mask in (bool_mask, add_mask):
        for causal in (None, "bottom_right"):
            o, lse = run_attention(sim, q, k, v, kernel, mask=mask, kv_lengths=kvl, causal=causal)
            eo, el = ref.attention(q, k, v, 1 / 8, mask=mask, kv_lengths=kvl, causal=causal, return_lse=True)
            check(o, eo, dtype, f"out mask={mask.dtype} causal={causal}")
            check(lse, el, "float32" if dtype == "float32" else "float16", "lse")
            assert not np.asarray(o[1].astype(np.float32)).any() and np.all(lse[1] == -np.inf)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["attn_mma", "attn_rows", "attn_combine"])
def test_attention_kv_lengths_causal_is_per_row(sim, path, dtype, kernel):
    """kv_lengths with causal and several queries: each batch row is what it would be alone with its
    kv_lengths[b] keys. Bottom-right puts the diagonal at the row's length (FlashAttention's kv
    cache), top-left stays j <= i; queries with no key (Lq > kv_len) give zeros and lse = -inf."""
    if kernel == "attn_mma" and dtype == "float32":
        pytest.skip("the tensor-core kernel takes float16/bfloat16")
    rng = np.random.default_rng(12)
    B, Hq, Hkv, Lk, D = 4, 4, 2, 130, 64
    Lq = 3 if kernel == "attn_combine" else 70  # split-KV: a few new tokens; else more than one tile
    kvl = np.array([130, 75, 0, 1 if kernel == "attn_combine" else 30])  # the last row: Lq > kv_len
    q, k, v = rand(rng, (B, Hq, Lq, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype)
    lse_tol = "float32" if dtype == "float32" else "float16"
    for causal in ("bottom_right", "top_left"):
        o, lse = run_attention(sim, q, k, v, kernel, causal=causal, kv_lengths=kvl)
        eo, el = ref.attention(q, k, v, 1 / 8, causal=causal, kv_lengths=kvl, return_lse=True)
        check(o, eo, dtype, f"out {causal}")
        check(lse, el, lse_tol, f"lse {causal}")
        for b, n in enumerate(kvl):
            if n == 0:
                assert not np.asarray(o[b].astype(np.float32)).any() and np.all(lse[b] == -np.inf)
                continue
            ao, al = qc.attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], 1 / 8, causal=causal,
                                  return_lse=True)
            check(o[b:b + 1], ao, dtype, f"out {causal} row {b} alone")
            check(lse[b:b + 1], al, lse_tol, f"lse {causal} row {b} alone")
            empty = Lq - n if causal == "bottom_right" and n < Lq else 0
            assert not np.asarray(o[b, :, :empty].astype(np.float32)).any() and np.all(lse[b, :, :empty] == -np.inf)
            assert np.isfinite(lse[b, :, empty:]).all()


@pytest.mark.parametrize("kernel", ["attn_rows", "attn_combine"])
def test_attention_bound_with_alibi_bias(sim, path, kernel):
    """float32 within README's bound 64 eps (M (1 + sigma / 8) + |ref|) with an ALiBi-style bias down
    to -300 (tests/test_numerics.py::attention_bound), as on the CPU backends."""
    rng = np.random.default_rng(21)
    B, Hq, Hkv, Lk, D = 2, 2, 1, 160, 64
    Lq = 3 if kernel == "attn_combine" else Lk
    q, k, v = rand(rng, (B, Hq, Lq, D), "float32"), rand(rng, (B, Hkv, Lk, D), "float32"), rand(rng, (B, Hkv, Lk, D), "float32")
    mask = alibi(Hq, Lk).astype(np.float32)
    kvl = np.array([Lk, 40])  # row 1 sees only keys whose bias is below -220
    for kv_lengths in (None, kvl):
        o, lse = run_attention(sim, q, k, v, kernel, scale=1 / 8, causal="bottom_right", mask=mask, kv_lengths=kv_lengths)
        eo, el = ref.attention(q, k, v, 1 / 8, causal="bottom_right", mask=mask, kv_lengths=kv_lengths, return_lse=True)
        bo, bl, _ = attention_bound(q, k, v, 1 / 8, mask=mask, causal="bottom_right", kv_lengths=kv_lengths)
        assert bl.max() > 1 + 200 / 8  # the scores really are large
        eps = np.finfo(np.float32).eps
        for name, g, e, m in (("out", o, eo, bo), ("lse", lse, el, bl)):
            fin = np.isfinite(e)
            assert np.array_equal(g[~fin], e[~fin]), name
            err = np.abs(g[fin].astype(np.float64) - e[fin])
            assert (err <= 64 * eps * (np.broadcast_to(m, e.shape)[fin] + np.abs(e[fin]))).all(), f"{name} {kv_lengths}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_masked_keys_hold_nan(sim, path, dtype):
    """NaN/Inf in masked K/V never reach the output; a NaN among visible keys poisons only its rows."""
    rng = np.random.default_rng(3)
    B, H, L, D = 1, 2, 40, 64
    q, k, v = rand(rng, (B, H, L, D), dtype), rand(rng, (B, H, L, D), dtype), rand(rng, (B, H, L, D), dtype)
    k[:, :, 35:] = np.nan       # beyond kv_lengths
    v[:, :, 35:] = np.inf
    v[:, :, 20] = np.nan        # future key for rows < 25 under causal (diagonal at kv_len 35: j <= i - 5)
    kvl = np.array([35])
    for kernel in (["attn_mma"] if dtype != "float32" else []) + ["attn_rows"]:
        qc.set_path("mma" if kernel == "attn_mma" else "rows")
        o = qc.attention(q, k, v, 1 / 8, causal="bottom_right", kv_lengths=kvl)
        assert sim.launches[-1][1].startswith(kernel + "<")
        eo = ref.attention(q, k, v, 1 / 8, causal="bottom_right", kv_lengths=kvl)
        check(o, eo, dtype, kernel)
        assert np.isfinite(np.asarray(o[:, :, :25], dtype=np.float32)).all()
        assert np.isnan(np.asarray(o[:, :, 25:], dtype=np.float32)).all()
    # NaN among visible scores: that row only
    k2 = k.copy()
    k2[:, :, 35:] = 0
    q2 = q.copy()
    q2[0, 0, 5, 0] = np.nan
    for kernel in (["attn_mma"] if dtype != "float32" else []) + ["attn_rows"]:
        qc.set_path("mma" if kernel == "attn_mma" else "rows")
        o = np.asarray(qc.attention(q2, k2, v[:, :, :20].repeat(2, axis=2), 1 / 8), dtype=np.float32)
        assert np.isnan(o[0, 0, 5]).all() and np.isfinite(np.delete(o[0, 0], 5, axis=0)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_other_head_dims_and_views(sim, path, dtype):
    rng = np.random.default_rng(11)
    for D, Dv in ((32, 32), (64, 48), (200, 256)):
        q, k, v = rand(rng, (1, 2, 9, D), dtype), rand(rng, (1, 2, 13, D), dtype), rand(rng, (1, 2, 13, Dv), dtype)
        o = qc.attention(q, k, v, 0.1, causal="top_left")
        check(o, ref.attention(q, k, v, 0.1, causal="top_left"), dtype, f"D={D} Dv={Dv}")
        assert sim.launches[-1][1].startswith("attn_rows<")
    # (B, L, H, D) transposed to (B, H, L, D): used without a copy, also by the tensor-core kernel
    x = rand(rng, (2, 70, 3 * 3, 64), dtype)
    q, k, v = (x[:, :, i * 3:(i + 1) * 3].transpose(0, 2, 1, 3) for i in range(3))
    out = np.zeros((2, 3, 70, 64 * 2), dtype=q.dtype)[..., ::2]  # a non-contiguous out=
    o = qc.attention(q, k, v, 0.125, causal="bottom_right", out=out)
    assert o is out
    check(out, ref.attention(q, k, v, 0.125, causal="bottom_right"), dtype, "views")
    if dtype != "float32":
        assert sim.launches[-1][1].startswith("attn_mma<")


def test_attention_auto_paths(sim, path):
    """auto: tensor cores for float16 prefill, split-KV + combine for decode against a long cache."""
    rng = np.random.default_rng(5)
    q, k, v = rand(rng, (1, 2, 1, 64), "float16"), rand(rng, (1, 2, 1024, 64), "float16"), rand(rng, (1, 2, 1024, 64), "float16")
    n = len(sim.launches)
    o = qc.attention(q, k, v, 0.125, causal="bottom_right")
    names = [x[1] for x in sim.launches[n:]]
    assert names[0].startswith("attn_rows<") and names[-1].startswith("attn_combine<")
    assert sim.launches[n][2][2] > 1  # grid z = B * splits
    check(o, ref.attention(q, k, v, 0.125, causal="bottom_right"), "float16", "decode")
    q = rand(rng, (1, 2, 80, 64), "float16")
    qc.attention(q, k, v, 0.125)
    assert sim.launches[-1][1] == "attn_mma<__half, 64>"
    assert sim.launches[-1][4] == qc.kernels.attn_mma_smem(64)


def test_attention_return_weights(sim, path):
    rng = np.random.default_rng(2)
    q, k, v = rand(rng, (2, 4, 6, 32), "float32"), rand(rng, (2, 2, 9, 32), "float32"), rand(rng, (2, 2, 9, 32), "float32")
    mask = rng.random((1, 1, 6, 9)) < 0.8
    kvl = np.array([9, 4])
    o, lse, w = qc.attention(q, k, v, 0.2, causal="bottom_right", mask=mask, kv_lengths=kvl, return_lse=True,
                             return_weights=True)
    eo, el, ew = ref.attention(q, k, v, 0.2, causal="bottom_right", mask=mask, kv_lengths=kvl, return_lse=True,
                                 return_weights=True)
    check(w, ew, "float32", "weights")
    check(o, eo, "float32", "out")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax(sim, dtype):
    rng = np.random.default_rng(1)
    x = rand(rng, (2, 3, 5, 300), dtype, -20, 20)
    bool_mask = rng.random((2, 1, 5, 300)) < 0.5
    bool_mask[0, 0, 1] = False
    add = np.where(rng.random((300,)) < 0.9, rng.normal(size=300), -np.inf).astype(x.dtype)
    for mask in (None, bool_mask, add, bool_mask[..., ::-1]):
        for causal in (None, "bottom_right", "top_left"):
            y = qc.softmax(x, mask=mask, causal=causal, scale=0.7)
            e = ref.softmax(x, mask=mask, causal=causal, scale=0.7)
            check(y, e, dtype, f"softmax mask={None if mask is None else mask.dtype} causal={causal}")
            assert np.all(np.asarray(y)[e == 0] == 0)  # masked entries are exactly 0
    check(qc.softmax(x[0, 0, 0]), ref.softmax(x[0, 0, 0]), dtype, "1-D")
    big = np.zeros((3, 8), dtype=x.dtype)
    big[:, [1, 5]] = np.finfo(np.float16).max  # overflows to +inf once scaled: the limit, equal mass
    big[2, 3] = np.nan                          # ... unless the row holds a NaN
    check(qc.softmax(big, scale=np.float32(1e36)), ref.softmax(big, scale=1e36), dtype, "+inf scores")


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_gelu_linear_embedding(sim, dtype):
    rng = np.random.default_rng(4)
    x = rand(rng, (3, 7, 97), dtype) + np.asarray(50, dtype=_dt(dtype))  # a large mean must not cancel
    w, b = rand(rng, (97,), dtype), rand(rng, (97,), dtype)
    check(qc.layer_norm(x, w, b, 1e-5), ref.layer_norm(x, w, b, 1e-5), dtype, "layer_norm")
    check(qc.layer_norm(x, None, None, 1e-5), ref.layer_norm(x, None, None, 1e-5), dtype, "layer_norm no affine")
    g = rand(rng, (4, 33), dtype, -6, 6)
    for approx in ("tanh", "none"):
        check(qc.gelu(g, approx), ref.gelu(g, approx), dtype, f"gelu {approx}")
    a, wt, bias = rand(rng, (2, 5, 24), dtype), rand(rng, (24, 40), dtype), rand(rng, (40,), dtype)
    for act in (None, "gelu_tanh", "gelu", "relu"):
        y = qc.linear(a, wt, bias, act)
        # the GEMM itself is the array module's; compare the epilogue from the same product
        prod = (a.astype(np.float32) @ wt.astype(np.float32)).astype(a.dtype)
        e = ref.linear(prod, np.eye(40, dtype=a.dtype), bias, act)
        check(y, e, dtype, f"linear {act}")
    table, pos = rand(rng, (50, 16), dtype), rand(rng, (20, 16), dtype)
    ids = rng.integers(0, 50, size=(2, 6))
    e = qc.embedding(ids, table, pos, pos0=3)
    check(e, (table[ids].astype(np.float64) + pos[3:9].astype(np.float64)).astype(table.dtype), dtype, "embedding")
    with pytest.raises(ValueError, match="ids must lie in"):
        qc.embedding(np.array([0, 50]), table)


def _mutated_build(tmp_path, file, pattern):
    """Build a copy of the kernels with the first line matching ``pattern`` in ``file`` removed."""
    src = tmp_path / "_cuda"
    shutil.copytree(qc.kernels.HERE, src, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    text = (src / file).read_text()
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
    assert hits, f"{pattern!r} not found in {file}"
    del lines[hits[0]]
    (src / file).write_text("".join(lines))
    return simbuild.SimRuntime(simbuild.build(str(src), str(tmp_path / "build")))


@pytest.mark.parametrize("kernel,pattern", [
    ("attn_rows", r"__syncthreads\(\);\s*// the previous tile is consumed"),
    ("attn_mma", r"__syncthreads\(\);\s*// everyone is done with buffer buf"),
])
def test_harness_catches_a_removed_syncthreads(sim, path, tmp_path, kernel, pattern):
    """Intact: right under every fiber schedule. One barrier removed: wrong under at least one."""
    rng = np.random.default_rng(9)
    q, k, v = rand(rng, (1, 1, 64, 64), "float16"), rand(rng, (1, 1, 256, 64), "float16"), rand(rng, (1, 1, 256, 64), "float16")
    expected = ref.attention(q, k, v, 0.125)
    broken = _mutated_build(tmp_path, "attention.cu", pattern)
    errors = {}
    try:
        for policy, eager in itertools.product(simbuild.SimRuntime.POLICIES, (False, True)):
            sim.set_policy(policy, eager)
            o, _ = run_attention(sim, q, k, v, kernel)
            check(o, expected, "float16", f"intact kernel, {policy}")
            broken.set_policy(policy, eager)
            qc._rt = broken
            o_bad, _ = run_attention(broken, q, k, v, kernel)
            qc._rt = sim
            errors[policy, eager] = float(np.abs(o_bad.astype(np.float64) - expected).max())
    finally:
        qc._rt = sim
        sim.set_policy("round_robin")
    assert max(errors.values()) > 0.05, f"the race went unnoticed: max errors {errors}"


def test_import_needs_no_cupy():
    code = "import sys, qkv, qkv._cuda, qkv._cuda.kernels; assert 'cupy' not in sys.modules; print(qkv._cuda.available())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != "float32"])
def test_mma_probe_emulation(sim, dtype):
    """The emulated ldmatrix / ldmatrix.trans / mma.sync give A @ B exactly (same check runs on a GPU)."""
    (a, bn, bk), (e_qk, e_pv) = mma_probe_case(dtype)
    d_qk, d_pv = np.full((16, 16), np.nan, np.float32), np.full((16, 16), np.nan, np.float32)
    sim.launch("probe", f"mma_probe<{qc.kernels.CTYPES[dtype]}>", (1,), (32,), (a, bn, bk, d_qk, d_pv))
    np.testing.assert_array_equal(d_qk, e_qk)
    np.testing.assert_array_equal(d_pv, e_pv)


def test_public_api_through_the_cuda_backend(sim, path, monkeypatch):
    """qkv.* -> qkv._ops validation -> the cuda backend -> the kernels, with the backend taking NumPy
    arrays for the length of the test (on a GPU the same path takes CuPy arrays)."""
    import qkv

    monkeypatch.setattr(qc, "available", lambda: (True, None))
    monkeypatch.setattr(qc, "ARRAY_KIND", "numpy")
    rng = np.random.default_rng(8)
    q, k, v = rand(rng, (2, 4, 33, 64), "float16"), rand(rng, (2, 2, 70, 64), "float16"), rand(rng, (2, 2, 70, 64), "float16")
    amask = np.where(rng.random((70,)) < 0.9, 0.0, -np.inf).astype(np.float32)  # cast to q.dtype by qkv._ops
    kvl = np.array([70, 41])
    n = len(sim.launches)
    with qkv.use_backend("cuda"):
        o, lse = qkv.attention(q, k, v, causal=True, mask=amask, kv_lengths=kvl, return_lse=True)
        x = rand(rng, (3, 40), "float32")
        w1, b1, w2, b2 = rand(rng, (40, 48), "float32"), rand(rng, (48,), "float32"), rand(rng, (48, 40), "float32"), None
        y = qkv.mlp(x, w1, b1, w2, b2)
        s = qkv.softmax(x, axis=0, causal=False)
        ln = qkv.layer_norm(x, w1[:, 0], None)
    assert {name.split("<")[0] for _, name, *_ in sim.launches[n:]} >= {"attn_mma", "bias_act", "softmax_rows", "layernorm_rows"}
    eo, el = ref.attention(q, k, v, 1 / 8, causal="bottom_right", mask=amask.astype(q.dtype), kv_lengths=kvl, return_lse=True)
    check(o, eo, "float16", "attention")
    check(lse, el, "float16", "lse")
    check(y, ref.linear(ref.linear(x, w1, b1, "gelu_tanh"), w2, b2), "float16", "mlp")  # float32 GEMM order
    check(s, ref.softmax(x.T).T, "float32", "softmax axis=0")
    check(ln, ref.layer_norm(x, w1[:, 0], None), "float32", "layer_norm")


# ---------------------------------------------------------------------------------------------
# attention backward (attn_bwd_dq, then attn_bwd_dkdv)

BWD_SHAPES = [  # B, Hq, Hkv, Lq, Lk, D, Dv
    (1, 2, 2, 37, 70, 64, 64),    # tails on both axes
    (2, 4, 1, 5, 33, 32, 48),     # MQA, D != Dv, few queries
    (1, 2, 1, 40, 20, 80, 80),    # GQA, Lq > Lk (bottom-right: the first queries see nothing)
]


def run_attention_backward(sim, dout, q, k, v, scale, **kw):
    """Forward (lse) then the backend's attention_backward on the CUDA-core kernels (forced: float16
    and bfloat16 at D = 64 would take the tensor-core ones, tested in test_cuda_sim_backward_mma.py);
    asserts both ran."""
    o, lse = qc.attention(q, k, v, scale, return_lse=True, **kw)
    n = len(sim.launches)
    qc.set_path("rows")
    try:
        got = qc.attention_backward(dout, q, k, v, o, lse, scale, **kw)
    finally:
        qc.set_path("auto")
    names = {name.split("<")[0] for _, name, *_ in sim.launches[n:]}
    assert {"attn_bwd_dq", "attn_bwd_dkdv"} <= names, names
    return got, ref.attention_backward(dout, q, k, v, o, lse, scale, **kw)


@pytest.mark.parametrize("shape", BWD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [None, "bottom_right", "top_left"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_backward(sim, dtype, causal, shape):
    B, Hq, Hkv, Lq, Lk, D, Dv = shape
    rng = np.random.default_rng(sum(shape))
    q, k, v = rand(rng, (B, Hq, Lq, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype), rand(rng, (B, Hkv, Lk, Dv), dtype)
    dout = rand(rng, (B, Hq, Lq, Dv), dtype)
    got, want = run_attention_backward(sim, dout, q, k, v, 0.2, causal=causal)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert g.dtype == q.dtype and g.shape == w.shape, name
        check(g, w, dtype, f"{name} causal={causal}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_backward_masks_kv_lengths_and_nan_keys(sim, dtype):
    """Bool and additive masks, kv_lengths with both causal modes, GQA, a fully masked row, NaN/Inf in
    keys and values nobody may see: exactly zero dk/dv there, zero dq for the empty row, finite dq."""
    rng = np.random.default_rng(12)
    B, Hq, Hkv, Lq, Lk, D = 2, 4, 2, 21, 45, 32
    q, k, v = rand(rng, (B, Hq, Lq, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype)
    dout = rand(rng, (B, Hq, Lq, D), dtype)
    k[:, :, 40:, 3], v[:, :, 41:, 5] = np.nan, np.inf  # beyond kv_lengths
    k[:, :, 7], v[:, :, 7] = np.inf, np.nan            # hidden by the bool mask from everyone
    kvl = np.array([40, 29])
    bmask = rng.random((B, 1, Lq, Lk)) < 0.7
    bmask[..., 7] = False
    bmask[0, 0, 2] = False                             # a fully masked row
    amask = np.where(bmask, rng.uniform(-3, 3, (B, 1, Lq, Lk)), -np.inf).astype(_dt(dtype))
    for mask in (bmask, amask):
        for causal in (None, "bottom_right", "top_left"):
            (dq, dk, dv), want = run_attention_backward(sim, dout, q, k, v, 0.3, causal=causal, mask=mask,
                                                         kv_lengths=kvl)
            for name, g, w in zip(("dq", "dk", "dv"), (dq, dk, dv), want):
                check(g, w, dtype, f"{name} causal={causal} mask={mask.dtype}")
            dq, dk, dv = (np.asarray(a, np.float32) for a in (dq, dk, dv))
            assert np.isfinite(dq).all() and not dq[0, :2, 2].any()
            assert not dk[0, :, 40:].any() and not dv[0, :, 40:].any() and not dk[1, :, 29:].any()
            assert not dk[:, :, 7].any() and not dv[:, :, 7].any()


def test_attention_backward_same_bits_every_schedule(sim):
    """No atomics, a fixed order: the same bits under every fiber schedule."""
    rng = np.random.default_rng(13)
    q, k, v, dout = (rand(rng, (1, 2, 33, 32), "float32") for _ in range(4))
    results = []
    try:
        for policy in simbuild.SimRuntime.POLICIES:
            sim.set_policy(policy)
            got, want = run_attention_backward(sim, dout, q, k, v, 0.2, causal="bottom_right")
            results.append([a.tobytes() for a in got])
    finally:
        sim.set_policy("round_robin")
    assert all(r == results[0] for r in results[1:])


@pytest.mark.parametrize("pattern", [r"__syncwarp\(\);\s*// dq: the tile", r"__syncwarp\(\);\s*// dkdv: the tile"])
def test_harness_catches_a_removed_syncwarp_in_attention_backward(sim, tmp_path, pattern):
    """Intact: right under every fiber schedule. The warp barrier between writing a tile's ds and
    reading it removed: wrong under at least one."""
    rng = np.random.default_rng(14)
    q, k, v, dout = (rand(rng, (1, 1, 64, 32), "float32") for _ in range(4))
    broken = _mutated_build(tmp_path, "attention.cu", pattern)
    errors = {}
    try:
        for policy, eager in itertools.product(simbuild.SimRuntime.POLICIES, (False, True)):
            sim.set_policy(policy, eager)
            got, want = run_attention_backward(sim, dout, q, k, v, 0.2)
            for name, g, w in zip(("dq", "dk", "dv"), got, want):
                check(g, w, "float32", f"intact kernel, {policy} {name}")
            broken.set_policy(policy, eager)
            qc._rt = broken
            bad, _ = run_attention_backward(broken, dout, q, k, v, 0.2)
            qc._rt = sim
            errors[policy, eager] = max(float(np.abs(b.astype(np.float64) - w).max()) for b, w in zip(bad, want))
    finally:
        qc._rt = sim
        sim.set_policy("round_robin")
    assert max(errors.values()) > 0.05, f"the race went unnoticed: max errors {errors}"
