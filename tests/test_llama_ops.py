"""The Llama-family ops: rms_norm, rope, swiglu, linear(activation="swiglu") and their backward, on
every NumPy-array backend and SIMD level.

- the float64 reference backward against central finite differences of the float64 reference
  forward (so the oracle itself is checked), for rms_norm, rope and swiglu;
- the inverse frequencies (plain and Llama 3 scaled) against Hugging Face's formulas, written out
  here in NumPy, and against torch computing them the way transformers does when torch is
  importable (never a dependency of the library or of CI);
- every backend against the oracle with the bounds README's accuracy table quotes;
- in place and strided rope, inputs never modified, the same bits for 1 and 2 threads, errors.
"""

import math

import numpy as np
import pytest
from conftest import adversarial_rows, assert_bound, assert_fd, eps, fd_grad, frozen

import qkv
from qkv import _reference as ref
from qkv import _rope

RNG = np.random.default_rng
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


def tiny(dtype):
    """The absolute slack where a float32/float64 exp flushes (|result| below it is 0 in the kernels)."""
    return 1e-30 if np.dtype(dtype) == np.float32 else 1e-300


# ---------------------------------------------------------------------------------------------
# the bounds (README, "### Accuracy")


def rms_bound(x, w, y_ref, dtype):
    """rms_norm: 32 eps (|w| + |y|), w = 1 when absent (y is x * rstd * w, |x * rstd| <= sqrt(C))."""
    aw = 1.0 if w is None else np.abs(w.astype(np.float64))
    return 32 * eps(dtype) * (aw + np.abs(y_ref.astype(np.float64)))


def rms_backward_bounds(dy, x, w, rstd, eps_n):
    """dx: 16 eps (S + |dx|), S = rstd (max|g| + max|xhat| |mean(g xhat)|) per row, g = dy w;
    dweight: 16 eps (sum over rows of |dy xhat| + |dweight|)."""
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    r = (1 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + eps_n) if rstd is None
         else rstd.astype(np.float64)[..., None])
    xh = x64 * r
    g = dy64 if w is None else dy64 * w.astype(np.float64)
    S = r * (np.abs(g).max(-1, keepdims=True) + np.abs(xh).max(-1, keepdims=True) * np.abs((g * xh).mean(-1, keepdims=True)))
    return S, np.abs(dy64 * xh).reshape(-1, x.shape[-1]).sum(0)


def rope_bound(x, dtype):
    """rope: 4 eps (|x[i]| + |x[i + D/2]|) for both outputs of the pair."""
    h = x.shape[-1] // 2
    a = np.abs(x.astype(np.float64))
    pair = a[..., :h] + a[..., h:]
    return 4 * eps(dtype) * np.concatenate([pair, pair], axis=-1)


def swiglu_bounds(dy, g, u, dtype):
    """swiglu: 16 eps |y| + tiny; dgate: 16 eps |dy u| (s + |g s (1 - s)|) + tiny (the two terms of
    silu'(g) = s + g s (1 - s), which cancel near g = -1.28); dup: 16 eps |dup| + tiny."""
    g64, u64 = g.astype(np.float64), u.astype(np.float64)
    with np.errstate(all="ignore"):
        s, sm = 1 / (1 + np.exp(-g64)), 1 / (1 + np.exp(g64))
        y = g64 * s * u64
        gc = np.clip(g64, -1e4, 1e4)
        e, t = eps(dtype), tiny(dtype)
        if dy is None:
            return 16 * e * np.abs(y) + t
        dy64 = dy.astype(np.float64)
        return (16 * e * np.abs(dy64 * u64) * (s + np.abs(gc * s * sm)) + t,
                16 * e * np.abs(dy64 * g64 * s) + t)


# ---------------------------------------------------------------------------------------------
# the inverse frequencies


def hf_inv_freq(D, theta, scaling):
    """transformers' _compute_default_rope_parameters / _compute_llama3_parameters, in NumPy."""
    inv = 1.0 / theta ** (np.arange(0, D, 2, dtype=np.int64).astype(np.float64) / D)
    if scaling is None:
        return inv
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv
    inv_llama = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, inv_llama)


@pytest.mark.parametrize("D", [2, 64, 128])
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
@pytest.mark.parametrize("scaling", [None, LLAMA3, dict(LLAMA3, factor=32.0, original_max_position_embeddings=64)])
def test_inv_freq_matches_hugging_face_formula(D, theta, scaling):
    got = _rope.inv_freq(D, theta, _rope.check_scaling("t", scaling))
    np.testing.assert_allclose(got, hf_inv_freq(D, theta, scaling), rtol=1e-14)
    if scaling is not None and D == 128:  # the three bands all occur
        wavelen = 2 * math.pi / hf_inv_freq(D, theta, None)
        old = scaling["original_max_position_embeddings"]
        assert (wavelen > old).any() and (wavelen < old / 4).any()


def test_rope_against_torch():
    """The rotation and the llama3 frequencies computed with torch, the way transformers' Llama does
    (cos/sin of cat(freqs, freqs), x * cos + rotate_half(x) * sin), in float64."""
    torch = pytest.importorskip("torch")
    rng = RNG(1)
    B, L, H, D = 2, 9, 3, 64
    x = rng.standard_normal((B, L, H, D))
    pos = rng.integers(0, 100000, size=(B, L))
    for theta, scaling in ((10000.0, None), (500000.0, LLAMA3)):
        inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).to(torch.float64) / D))
        if scaling is not None:
            factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
            old = scaling["original_max_position_embeddings"]
            wavelen = 2 * math.pi / inv
            inv_l = torch.where(wavelen > old / low, inv / factor, inv)
            smooth = (old / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
            medium = ~(wavelen < old / high) * ~(wavelen > old / low)
            inv = torch.where(medium, smoothed, inv_l)
        freqs = torch.tensor(pos, dtype=torch.float64)[..., None] * inv     # (B, L, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]               # (B, L, 1, D)
        xt = torch.tensor(x)
        rot = torch.cat((-xt[..., D // 2:], xt[..., : D // 2]), dim=-1)
        want = (xt * emb.cos() + rot * emb.sin()).numpy()
        for backend in ("numpy", "cpu"):
            with qkv.use_backend(backend):
                got = qkv.rope(x, pos, theta=theta, scaling=scaling)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"{backend} {scaling}")


def test_rope_against_hand_coded_formula():
    """Without torch: the pairs (i, i + D/2) rotated by pos * inv_freq[i], element by element."""
    rng = RNG(2)
    x = rng.standard_normal((1, 4, 2, 8))
    pos = np.array([0, 1, 7, 123456])
    inv = hf_inv_freq(8, 500000.0, LLAMA3)
    want = np.empty_like(x)
    for l, p in enumerate(pos):
        for i in range(4):
            c, s = math.cos(p * inv[i]), math.sin(p * inv[i])
            want[0, l, :, i] = x[0, l, :, i] * c - x[0, l, :, i + 4] * s
            want[0, l, :, i + 4] = x[0, l, :, i + 4] * c + x[0, l, :, i] * s
    for backend in ("numpy", "cpu"):
        with qkv.use_backend(backend):
            np.testing.assert_allclose(qkv.rope(x, pos, theta=500000.0, scaling=LLAMA3), want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(qkv.rope(x, np.zeros(4, np.int64)), x)  # position 0: the identity


# ---------------------------------------------------------------------------------------------
# finite differences of the float64 oracle


def test_rms_norm_reference_matches_finite_differences():
    rng = RNG(3)
    for C in (1, 2, 7):
        x, w, dy = rng.standard_normal((3, C)) * 2 + 0.5, rng.standard_normal(C), rng.standard_normal((3, C))

        def loss():
            return float((ref.rms_norm(x, w, 1e-3) * dy).sum())

        dx, dw = ref.rms_norm_backward(dy, x, w, None, 1e-3)
        assert_fd(dx, fd_grad(loss, x), f"dx C={C}")
        assert_fd(dw, fd_grad(loss, w), f"dw C={C}")
        _, r = ref.rms_norm(x, w, 1e-3, return_stats=True)
        for a, a2 in zip((dx, dw), ref.rms_norm_backward(dy, x, w, r, 1e-3)):
            np.testing.assert_allclose(a, a2, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("scaling", [None, LLAMA3], ids=["plain", "llama3"])
def test_rope_reference_matches_finite_differences(scaling):
    rng = RNG(4)
    x, dy = rng.standard_normal((2, 3, 2, 6)), rng.standard_normal((2, 3, 2, 6))
    pos = rng.integers(0, 50000, size=(2, 3))
    inv = _rope.inv_freq(6, 10000.0, _rope.check_scaling("t", scaling))

    def loss():
        return float((ref.rope(x, pos, inv) * dy).sum())

    assert_fd(ref.rope(dy, pos, inv, inverse=True), fd_grad(loss, x), "rope dx")
    np.testing.assert_allclose(ref.rope(ref.rope(x, pos, inv), pos, inv, inverse=True), x, atol=1e-13)


def test_swiglu_reference_matches_finite_differences():
    rng = RNG(5)
    g = np.concatenate([np.linspace(-8, 8, 17), [-1.2784645, 30.0, -30.0]])[None, :] * np.ones((2, 1))
    u, dy = rng.standard_normal(g.shape), rng.standard_normal(g.shape)

    def loss():
        return float((ref.swiglu(g, u) * dy).sum())

    dg, du = ref.swiglu_backward(dy, g, u)
    assert_fd(dg, fd_grad(loss, g), "dgate")
    assert_fd(du, fd_grad(loss, u), "dup")


# ---------------------------------------------------------------------------------------------
# every backend against the oracle


def finite_rows(rng, dtype):
    for name, x in adversarial_rows(rng, dtype):
        if np.isfinite(x).all():
            yield name, x


@pytest.mark.parametrize("weighted", [True, False], ids=["weight", "noweight"])
def test_rms_norm_adversarial(backend, simd, dtype, weighted):
    rng = RNG(10)
    for name, x in finite_rows(rng, dtype):
        w = rng.standard_normal(x.shape[-1]).astype(dtype) if weighted else None
        for eps_n in (1e-6, 1e-5):
            y, rstd = qkv.rms_norm(x, w, eps_n, return_stats=True)
            want = ref.rms_norm(x, w, eps_n)
            assert y.dtype == x.dtype and rstd.shape == x.shape[:-1]
            assert_bound(y, want, rms_bound(x, w, want, dtype), f"y {name} eps {eps_n}")
            _, rr = ref.rms_norm(x, w, eps_n, return_stats=True)
            assert_bound(rstd, rr, 16 * eps(dtype) * np.abs(rr.astype(np.float64)), f"rstd {name}")
            dy = rng.standard_normal(x.shape).astype(dtype)
            for stats in (rstd, None):
                dx, dw = qkv.rms_norm_backward(dy, x, w, stats, eps=eps_n)
                rdx, rdw = ref.rms_norm_backward(dy, x, w, stats, eps_n)
                S, Sw = rms_backward_bounds(dy, x, w, stats, eps_n)
                assert dx.dtype == x.dtype and (dw is None) == (w is None)
                assert_bound(dx, rdx, 16 * eps(dtype) * (S + np.abs(rdx)), f"dx {name}")
                if w is not None:
                    assert_bound(dw, rdw, 16 * eps(dtype) * (Sw + np.abs(rdw)), f"dweight {name}")


def test_rms_norm_shapes_out_and_nan(backend, simd, dtype):
    rng = RNG(11)
    for shape in [(1, 1), (7, 576), (2, 3, 384), (5, 4096)]:
        x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
        w = rng.standard_normal(shape[-1]).astype(dtype)
        want = ref.rms_norm(x, w)
        assert_bound(qkv.rms_norm(x, w), want, rms_bound(x, w, want, dtype), str(shape))
    out = np.empty_like(x)
    assert qkv.rms_norm(x, w, out=out) is out
    x = np.ones((3, 9), dtype)
    x[1, 2] = np.nan
    y = qkv.rms_norm(x, None)
    assert np.isnan(y[1]).all() and not np.isnan(y[[0, 2]]).any()


def rope_inputs(rng, dtype):
    """(name, x, positions): sizes off the SIMD widths, far positions, a strided view (q of a fused
    qkv projection), read-only, (L,) and (B, L) positions, L = 1 decoding steps."""
    for D in (2, 6, 16, 34, 64, 128):
        yield f"D{D}", rng.standard_normal((2, 5, 3, D)).astype(dtype), rng.integers(0, 10000, size=(2, 5))
    yield "far", rng.standard_normal((1, 4, 2, 64)).astype(dtype), np.array([0, 131071, 10**6, 2**31 + 5])
    yield "shared_positions", rng.standard_normal((3, 7, 2, 32)).astype(dtype), np.arange(7) + 100
    yield "decode", rng.standard_normal((4, 1, 8, 64)).astype(dtype), np.array([[5], [0], [77], [4095]])
    yield "negative_positions", rng.standard_normal((1, 3, 1, 8)).astype(dtype), np.array([-3, -1, 2])
    qkv_buf = rng.standard_normal((2, 6, 3 * 4 * 32)).astype(dtype).reshape(2, 6, 12, 32)
    yield "strided_view", qkv_buf[:, :, 4:8], rng.integers(0, 512, size=(2, 6))
    yield "readonly", frozen(rng.standard_normal((2, 3, 2, 16)).astype(dtype)), np.arange(3, dtype=np.int32)
    yield "big_values", (rng.standard_normal((1, 2, 2, 16)) * 1e4).astype(dtype), np.array([3, 9])


@pytest.mark.parametrize("scaling", [None, LLAMA3], ids=["plain", "llama3"])
def test_rope_adversarial(backend, simd, dtype, scaling):
    rng = RNG(12)
    for name, x, pos in rope_inputs(rng, dtype):
        inv = _rope.inv_freq(x.shape[-1], 500000.0, _rope.check_scaling("t", scaling))
        y = qkv.rope(x, pos, theta=500000.0, scaling=scaling)
        assert y.dtype == x.dtype and y.shape == x.shape and y.flags.c_contiguous
        assert_bound(y, ref.rope(x, pos, inv), rope_bound(x, dtype), f"rope {name}")
        d = qkv.rope_backward(x, pos, theta=500000.0, scaling=scaling)
        assert_bound(d, ref.rope(x, pos, inv, inverse=True), rope_bound(x, dtype), f"rope_backward {name}")


def test_rope_in_place_and_out(backend, simd, dtype):
    rng = RNG(13)
    buf = rng.standard_normal((2, 5, 3 * 4 * 16)).astype(dtype).reshape(2, 5, 12, 16)
    pos = rng.integers(0, 300, size=(2, 5))
    q = buf[:, :, :4]                                       # a strided view, rotated in place
    before = buf.copy()
    want = ref.rope(q, pos, _rope.inv_freq(16, 10000.0))
    assert qkv.rope(q, pos, out=q) is q
    assert_bound(buf[:, :, :4], want, rope_bound(before[:, :, :4], dtype), "in place")
    np.testing.assert_array_equal(buf[:, :, 4:], before[:, :, 4:])  # k and v untouched
    x = rng.standard_normal((1, 3, 2, 8)).astype(dtype)
    out = np.empty_like(x)
    assert qkv.rope(x, np.arange(3), out=out) is out
    assert_bound(out, ref.rope(x, np.arange(3), _rope.inv_freq(8, 10000.0)), rope_bound(x, dtype), "out")
    shared = np.zeros(x.size + 1, dtype)
    with pytest.raises(ValueError, match="out overlaps the input x"):  # only out=x itself may overlap
        qkv.rope(shared[:-1].reshape(x.shape), np.arange(3), out=shared[1:].reshape(x.shape))


def swiglu_inputs(rng, dtype):
    for name, g in adversarial_rows(rng, dtype):
        yield name, g, rng.standard_normal(g.shape).astype(dtype)
    g = np.concatenate([np.linspace(-120, 120, 241), [-1.2784645, 0.0, -0.0, 1e4, -1e4, 750.0, -750.0,
                                                      np.inf, -np.inf, np.nan]]).astype(dtype)
    yield "range", g, rng.standard_normal(g.shape).astype(dtype)
    yield "up_nonfinite", np.ones(3, dtype), np.array([np.inf, -np.inf, np.nan], dtype)


def test_swiglu_adversarial(backend, simd, dtype):
    rng = RNG(14)
    for name, g, u in swiglu_inputs(rng, dtype):
        y = qkv.swiglu(g, u)
        assert y.dtype == g.dtype and y.shape == g.shape
        assert_bound(y, ref.swiglu(g, u), swiglu_bounds(None, g, u, dtype), f"swiglu {name}")
        dy = rng.standard_normal(g.shape).astype(dtype)
        dg, du = qkv.swiglu_backward(dy, g, u)
        rdg, rdu = ref.swiglu_backward(dy, g, u)
        bg, bu = swiglu_bounds(dy, g, u, dtype)
        assert_bound(dg, rdg, bg, f"dgate {name}")
        assert_bound(du, rdu, bu, f"dup {name}")


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_swiglu(backend, simd, dtype, layout, with_bias):
    """linear(x, W, b, "swiglu") = swiglu of the two halves of x @ W + b, for row counts below, at and
    above the GEMM block, and with return_preact (the whole (rows, 2 inner) product)."""
    rng = RNG(15)
    K, inner = 40, 24
    W = (rng.standard_normal((K, 2 * inner)) / np.sqrt(K)).astype(dtype)
    W = np.asfortranarray(W) if layout == "F" else W
    b = rng.standard_normal(2 * inner).astype(dtype) if with_bias else None
    for R in (1, 3, 200, 4001):
        x = rng.standard_normal((R, K)).astype(dtype)
        pre = ref.linear(x, W, b)
        want = ref.swiglu(pre[:, :inner], pre[:, inner:])
        y = qkv.linear(x, W, b, activation="swiglu")
        assert y.shape == (R, inner) and y.dtype == dtype
        # the GEMM's own rounding (k eps sum |x w|) enters through silu's and up's derivatives
        S = np.abs(x.astype(np.float64)) @ np.abs(W.astype(np.float64))
        g, u = pre[:, :inner].astype(np.float64), pre[:, inner:].astype(np.float64)
        dsilu = 1 / (1 + np.exp(-g)) * (1 + np.abs(g) / (1 + np.exp(g)))
        bound = 8 * K * eps(dtype) * (np.abs(u) * dsilu * S[:, :inner] + np.abs(g) * S[:, inner:]) + \
            swiglu_bounds(None, pre[:, :inner], pre[:, inner:], dtype)
        assert_bound(y, want, bound, f"R={R}")
        y2, p2 = qkv.linear(x, W, b, activation="swiglu", return_preact=True)
        assert p2.shape == (R, 2 * inner)
        assert_bound(p2, pre, 8 * K * eps(dtype) * S, f"preact R={R}")
        if backend == "cpu":  # the same epilogue on the kept preact
            np.testing.assert_array_equal(y2, qkv.swiglu(p2[:, :inner], p2[:, inner:]))
        assert_bound(y2, want, bound, f"return_preact R={R}")
    x3 = rng.standard_normal((2, 3, K)).astype(dtype)
    out = np.empty((2, 3, inner), dtype)
    assert qkv.linear(x3, W, b, activation="swiglu", out=out) is out


def test_swiglu_block_boundaries(dtype, monkeypatch):
    """The cpu path's row blocks (several, and a ragged last one) give the unblocked result."""
    import qkv._cpu as cpu

    rng = RNG(16)
    x = rng.standard_normal((203, 10)).astype(dtype)
    W = rng.standard_normal((10, 2 * 130)).astype(dtype)
    whole = qkv.linear(x, W, None, "swiglu")
    monkeypatch.setattr(cpu, "SWIGLU_BLOCK_BYTES", 1)  # 64-row blocks
    blocked = qkv.linear(x, W, None, "swiglu")
    # the BLAS may round a 64-row GEMM differently from a 203-row one: only to its own rounding
    np.testing.assert_allclose(blocked, whole, rtol=200 * eps(dtype), atol=200 * eps(dtype))
    np.testing.assert_array_equal(blocked[:64], qkv.linear(x[:64], W, None, "swiglu"))


# ---------------------------------------------------------------------------------------------
# across the ops: inputs untouched, threads, errors


def test_inputs_unchanged(backend, dtype):
    rng = RNG(20)
    x = frozen(rng.standard_normal((2, 5, 3, 16)).astype(dtype))
    w = frozen(rng.standard_normal(16).astype(dtype))
    pos = frozen(rng.integers(0, 100, size=(2, 5)))
    copies = [a.copy() for a in (x, w, pos)]
    y, r = qkv.rms_norm(x, w, return_stats=True)
    qkv.rms_norm_backward(x, x, w, frozen(r))
    qkv.rope(x, pos, scaling=LLAMA3)
    qkv.rope_backward(x, pos)
    qkv.swiglu(x, x)
    qkv.swiglu_backward(x, x, x)
    qkv.linear(x.reshape(10, 48), frozen(rng.standard_normal((48, 8)).astype(dtype)), None, "swiglu")
    for a, c in zip((x, w, pos), copies):
        np.testing.assert_array_equal(a, c)


def test_same_bits_for_one_and_two_threads(threads):
    """Above every parallel threshold; rms_norm_backward's dweight is a reduction over rows."""
    rng = RNG(21)
    x = rng.standard_normal((333, 257)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(257).astype(np.float32)
    xr = rng.standard_normal((4, 64, 8, 64)).astype(np.float32)
    pos = rng.integers(0, 4096, size=(4, 64))
    for call in (
        lambda: qkv.rms_norm(x, w, return_stats=True),
        lambda: qkv.rms_norm_backward(dy, x, w),
        lambda: (qkv.rope(xr, pos, scaling=LLAMA3), qkv.rope_backward(xr, pos)),
        lambda: (qkv.swiglu(x, dy),) + qkv.swiglu_backward(dy, x, dy),
    ):
        threads(1)
        one = call()
        threads(2)
        two = call()
        for a, b in zip(one, two):
            assert a.tobytes() == b.tobytes()


F32 = np.float32


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: qkv.rms_norm(np.zeros((2, 3), F32), np.zeros(4, F32)), ValueError,
         r"rms_norm: weight must have shape \(3,\) to match x of shape \(2, 3\), got \(4,\)"),
        (lambda: qkv.rms_norm(np.zeros((2, 3), F32), np.zeros(3, np.float64)), TypeError,
         "weight has dtype float64 but x has dtype float32"),
        (lambda: qkv.rms_norm(np.zeros((2, 3), F32), None, eps=-1.0), ValueError, "eps must be >= 0"),
        (lambda: qkv.rms_norm(np.zeros((2, 3), np.int32), None), TypeError, "x has dtype int32"),
        (lambda: qkv.rms_norm_backward(np.zeros((2, 3), F32), np.zeros((2, 3), F32), None, np.zeros(3, F32)),
         ValueError, r"rstd must be a float array of shape \(2,\)"),
        (lambda: qkv.rms_norm_backward(np.zeros((2, 4), F32), np.zeros((2, 3), F32), None), ValueError,
         r"dy has shape \(2, 4\) but x has shape \(2, 3\)"),
        (lambda: qkv.rope(np.zeros((2, 3, 4), F32), np.arange(3)), ValueError,
         r"x must be 4-D \(B, L, H, D\), got shape \(2, 3, 4\)"),
        (lambda: qkv.rope(np.zeros((1, 3, 2, 5), F32), np.arange(3)), ValueError, "head dim D .* must be even"),
        (lambda: qkv.rope(np.zeros((1, 3, 2, 4), F32), np.arange(4)), ValueError,
         r"positions must have shape \(1, 3\) or \(3,\) for x of shape \(1, 3, 2, 4\)"),
        (lambda: qkv.rope(np.zeros((1, 3, 2, 4), F32), np.arange(3.0)), TypeError, "positions must be integers"),
        (lambda: qkv.rope(np.zeros((1, 3, 2, 4), F32), [0, 1, 2]), TypeError, "positions must be a NumPy or CuPy"),
        (lambda: qkv.rope(np.zeros((1, 3, 2, 4), F32), np.arange(3), theta=0.0), ValueError, "theta must be > 0"),
        (lambda: qkv.rope(np.zeros((1, 3, 2, 4), F32), np.arange(3), scaling={"rope_type": "yarn", "factor": 4.0}),
         ValueError, "unsupported rope_scaling type 'yarn'"),
        (lambda: qkv.rope(np.zeros((1, 3, 2, 4), F32), np.arange(3), scaling={"type": "dynamic"}), ValueError,
         "unsupported rope_scaling type 'dynamic'"),
        (lambda: qkv.rope(np.zeros((1, 3, 2, 4), F32), np.arange(3), scaling={"rope_type": "llama3"}), ValueError,
         "needs 'factor'"),
        (lambda: qkv.rope(np.zeros((1, 3, 2, 4), F32), np.arange(3), scaling=dict(LLAMA3, low_freq_factor=-1)),
         ValueError, r"rope_scaling\['low_freq_factor'\] must be a finite number > 0"),
        (lambda: qkv.rope(np.zeros((1, 3, 2, 4), F32), np.arange(3), scaling="llama3"), TypeError,
         "scaling must be None or a rope_scaling dict"),
        (lambda: qkv.rope(np.zeros((1, 3, 2, 4), F32), np.arange(3), out=np.zeros((1, 3, 2, 4), np.float64)),
         ValueError, "out has shape"),
        (lambda: qkv.rope_backward(np.zeros((1, 3, 2, 4), F32), np.arange(2)), ValueError,
         r"positions must have shape \(1, 3\) or \(3,\) for dy"),
        (lambda: qkv.swiglu(np.zeros((2, 3), F32), np.zeros((3, 2), F32)), ValueError,
         r"up has shape \(3, 2\) but gate has shape \(2, 3\)"),
        (lambda: qkv.swiglu(np.zeros((2, 3), F32), np.zeros((2, 3), np.float64)), TypeError,
         "up has dtype float64 but gate has dtype float32"),
        (lambda: qkv.swiglu_backward(np.zeros((2, 2), F32), np.zeros((2, 3), F32), np.zeros((2, 3), F32)),
         ValueError, r"dy has shape \(2, 2\) but gate has shape \(2, 3\)"),
        (lambda: qkv.linear(np.zeros((2, 3), F32), np.zeros((3, 5), F32), activation="swiglu"), ValueError,
         r"'swiglu' needs weight \(in, 2 \* inner\) .* got shape \(3, 5\)"),
        (lambda: qkv.linear(np.zeros((2, 3), F32), np.zeros((3, 4), F32), activation="swiglu",
                            out=np.zeros((2, 4), F32)), ValueError, r"expected \(2, 2\)"),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_numpy_backend_float16():
    """The reference backend takes float16 (the cuda backend's dtype) for the new ops too."""
    rng = RNG(30)
    x = rng.standard_normal((2, 3, 2, 8)).astype(np.float16)
    with qkv.use_backend("numpy"):
        y, r = qkv.rms_norm(x, np.ones(8, np.float16), return_stats=True)
        assert y.dtype == np.float16 and r.dtype == np.float32
        assert qkv.rope(x, np.arange(3)).dtype == np.float16
        assert qkv.swiglu(x, x).dtype == np.float16
