"""Backward of the row ops: layer_norm_backward, gelu_backward, softmax_backward, linear_backward,
embedding_backward, on every backend and SIMD level.

Two checks for each: the float64 reference backward against central finite differences of the
float64 reference forward (so the oracle itself is verified), and every backend against that
reference with a bound derived from the computation (the README's accuracy table quotes them).
Also: every option, adversarial rows, inputs never modified, read-only and strided inputs, and the
same bits for 1 and 2 threads.
"""

import numpy as np
import pytest
from conftest import adversarial_layer_norm_inputs, adversarial_rows, assert_bound, assert_fd, eps, fd_grad, frozen

import qkv
from qkv import _reference as ref

RNG = np.random.default_rng


# ---------------------------------------------------------------------------------------------
# helpers


def same_bits_for_1_and_2_threads(threads, call):
    threads(1)
    one = call()
    threads(2)
    two = call()
    for a, b in zip(one, two):
        if a is not None:
            assert a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------------------------
# layer norm


def ln_bounds(dy, x, w, mean=None, rstd=None, eps_ln=1e-5):
    """Per-row scale S = rstd (max|g| + |mean g| + max|xhat| |mean(g xhat)|) of dx, and the column
    sums of |dy xhat| and |dy| that bound dweight and dbias (float64)."""
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    if mean is None:
        m = x64.mean(-1, keepdims=True)
        r = 1 / np.sqrt(((x64 - m) ** 2).mean(-1, keepdims=True) + eps_ln)
    else:
        m, r = mean.astype(np.float64)[..., None], rstd.astype(np.float64)[..., None]
    xh = (x64 - m) * r
    g = dy64 if w is None else dy64 * w.astype(np.float64)
    S = r * (np.abs(g).max(-1, keepdims=True) + np.abs(g.mean(-1, keepdims=True))
             + np.abs(xh).max(-1, keepdims=True) * np.abs((g * xh).mean(-1, keepdims=True)))
    C = x.shape[-1]
    return S, np.abs(dy64 * xh).reshape(-1, C).sum(0), np.abs(dy64).reshape(-1, C).sum(0)


def check_ln(dy, x, w, b, stats, what, eps_ln=1e-5):
    mean = rstd = None
    if stats:
        _, mean, rstd = qkv.layer_norm(x, w, b, eps_ln, return_stats=True)
    dx, dw, db = qkv.layer_norm_backward(dy, x, w, b, eps_ln, mean=mean, rstd=rstd)
    rdx, rdw, rdb = ref.layer_norm_backward(dy, x, w, b, eps_ln, mean=mean, rstd=rstd)
    S, Sw, Sb = ln_bounds(dy, x, w, mean, rstd, eps_ln)
    e = eps(x.dtype)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    assert_bound(dx, rdx, 16 * e * (S + np.abs(rdx)), f"dx {what}")
    assert (dw is None) == (w is None) and (db is None) == (b is None)
    if w is not None:
        assert_bound(dw, rdw, 16 * e * (Sw + np.abs(rdw)), f"dweight {what}")
    if b is not None:
        assert_bound(db, rdb, 16 * e * (Sb + np.abs(rdb)), f"dbias {what}")


def test_layer_norm_reference_matches_finite_differences():
    rng = RNG(0)
    for C in (1, 2, 7):
        x, w, b = rng.standard_normal((3, C)) * 2 + 1, rng.standard_normal(C), rng.standard_normal(C)
        dy = rng.standard_normal((3, C))
        def loss():
            return float((ref.layer_norm(x, w, b, 1e-3) * dy).sum())
        dx, dw, db = ref.layer_norm_backward(dy, x, w, b, 1e-3)
        assert_fd(dx, fd_grad(loss, x), f"dx C={C}")
        assert_fd(dw, fd_grad(loss, w), f"dw C={C}")
        assert_fd(db, fd_grad(loss, b), f"db C={C}")
        # the saved statistics give the same gradient
        _, m, r = ref.layer_norm(x, w, b, 1e-3, return_stats=True)
        for a, a2 in zip((dx, dw, db), ref.layer_norm_backward(dy, x, w, b, 1e-3, mean=m, rstd=r)):
            np.testing.assert_allclose(a, a2, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("stats", [True, False], ids=["stats", "recompute"])
def test_layer_norm_adversarial(backend, simd, dtype, affine, stats):
    rng = RNG(10)
    for name, x, w, b in adversarial_layer_norm_inputs(rng, dtype, affine):
        dy = rng.standard_normal(x.shape).astype(dtype)
        check_ln(dy, x, w, b, stats, name)


@pytest.mark.parametrize("shape", [(1, 1), (7, 768), (2, 3, 384), (300, 33), (5, 1000)])
def test_layer_norm_shapes(backend, simd, dtype, shape):
    rng = RNG(11)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w, b = rng.standard_normal(shape[-1]).astype(dtype), rng.standard_normal(shape[-1]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    check_ln(dy, x, w, b, True, str(shape))
    check_ln(dy, x, w, b, False, str(shape), eps_ln=0.1)


def test_layer_norm_return_stats(backend, dtype):
    x = (RNG(12).standard_normal((4, 3, 50)) * 2 + 5).astype(dtype)
    y, mean, rstd = qkv.layer_norm(x, None, None, 1e-5, return_stats=True)
    sd = np.float64 if dtype == np.float64 else np.float32
    assert mean.shape == rstd.shape == (4, 3) and mean.dtype == rstd.dtype == sd
    np.testing.assert_array_equal(y, qkv.layer_norm(x))
    x64 = x.astype(np.float64)
    e = eps(dtype)
    np.testing.assert_allclose(mean, x64.mean(-1), rtol=16 * e)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(x64.var(-1) + 1e-5), rtol=64 * e)


def test_layer_norm_nan_and_stats_errors(backend, dtype):
    x = RNG(13).standard_normal((3, 9)).astype(dtype)
    dy = np.ones_like(x)
    x[1, 2] = np.nan
    dx, dw, db = qkv.layer_norm_backward(dy, x, np.ones(9, dtype), np.ones(9, dtype))
    assert np.isnan(dx[1]).all() and not np.isnan(dx[[0, 2]]).any()
    assert np.isnan(dw).all() and not np.isnan(db).any()  # xhat of row 1 is NaN; dbias is sum(dy)
    with pytest.raises(ValueError, match="both mean and rstd"):
        qkv.layer_norm_backward(dy, x, mean=np.zeros(3, dtype))
    with pytest.raises(ValueError, match=r"mean must be a float array of shape \(3,\)"):
        qkv.layer_norm_backward(dy, x, mean=np.zeros(4, dtype), rstd=np.zeros(4, dtype))
    with pytest.raises(ValueError, match=r"dy has shape \(3, 8\) but x has shape \(3, 9\)"):
        qkv.layer_norm_backward(dy[:, :8], x)
    with pytest.raises(TypeError, match="dy has dtype"):
        qkv.layer_norm_backward(dy.astype(np.float16), x)


# ---------------------------------------------------------------------------------------------
# GELU


def gelu_bound(dy, x, approximate):
    """16 eps kappa |dy| (|first term| + |second term|) + floor: the two terms of the derivative may
    cancel (gelu' has a zero near x = -0.75), and in the far negative tail the result moves by ~kappa
    ulp per ulp of rounding inside exp (kappa = 1 + |2u| for tanh, 1 + x^2/2 for erf), as in the forward."""
    x64 = np.clip(x.astype(np.float64), -1e4, 1e4)
    from scipy import special

    if approximate == "tanh":
        u = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)
        s, sm = special.expit(2 * u), special.expit(-2 * u)
        mag = s + np.abs(2 * np.sqrt(2 / np.pi) * x64 * (1 + 3 * 0.044715 * x64**2) * s * sm)
        kappa = 1 + np.abs(2 * u)
    else:
        mag = 0.5 * special.erfc(-x64 / np.sqrt(2)) + np.abs(x64) * np.exp(-0.5 * x64**2) / np.sqrt(2 * np.pi)
        kappa = 1 + x64**2 / 2
    floor = 1e-300 if x.dtype == np.float64 else 1e-30
    return 16 * eps(x.dtype) * kappa * np.abs(dy.astype(np.float64)) * mag + floor


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_reference_matches_finite_differences(approximate):
    x = np.concatenate([np.linspace(-8, 8, 161), [-0.75, 1e-8, 3.5]])
    dy = RNG(1).standard_normal(x.shape)
    def loss():
        return float((ref.gelu(x, approximate) * dy).sum())
    assert_fd(ref.gelu_backward(dy, x, approximate), fd_grad(loss, x), approximate)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_backward_range(backend, simd, dtype, approximate):
    """Every regime, including the limits: 1 at +inf and huge x, 0 at -inf and huge negative x."""
    x = np.concatenate([np.linspace(-30, 30, 6001), [-1e-30, 0.0, 1e-30, 1e4, -1e4, 3e38, -3e38,
                                                     np.inf, -np.inf, np.nan]]).astype(dtype)
    dy = RNG(2).standard_normal(x.shape).astype(dtype)
    got = qkv.gelu_backward(dy, x, approximate)
    want = ref.gelu_backward(dy, x, approximate)
    assert got.dtype == dtype
    assert_bound(got, want, gelu_bound(dy, x, approximate), approximate)
    ones = np.ones(6, dtype)
    lim = qkv.gelu_backward(ones, np.array([np.inf, 1e4, 3e38, -np.inf, -1e4, -3e38], dtype), approximate)
    np.testing.assert_array_equal(lim, [1, 1, 1, 0, 0, 0])


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_backward_adversarial(backend, simd, dtype, approximate):
    rng = RNG(20)
    for name, x in adversarial_rows(rng, dtype):
        dy = rng.standard_normal(x.shape).astype(dtype)
        got = qkv.gelu_backward(dy, x, approximate)
        assert_bound(got, ref.gelu_backward(dy, x, approximate), gelu_bound(dy, x, approximate), name)
    x = np.array(0.5, dtype)  # 0-d
    np.testing.assert_allclose(qkv.gelu_backward(np.array(2.0, dtype), x, approximate),
                               ref.gelu_backward(np.array(2.0, dtype), x, approximate), rtol=16 * eps(dtype))


# ---------------------------------------------------------------------------------------------
# softmax


def softmax_bound(dy, y, scale):
    """32 eps |scale| y (|dy| + sum|dy y|) per element: one rounding of each factor plus the row sum."""
    y64, dy64 = y.astype(np.float64), np.where(y == 0, 0, dy.astype(np.float64))
    return 32 * eps(y.dtype) * abs(scale) * y64 * (np.abs(dy64) + np.abs(dy64 * y64).sum(-1, keepdims=True))


def test_softmax_reference_matches_finite_differences():
    rng = RNG(3)
    x = rng.standard_normal((2, 4, 6))
    dy = rng.standard_normal(x.shape)
    mask = rng.random((4, 6)) < 0.7
    mask[1] = False  # a fully masked row: zero gradient
    for kw in ({}, {"scale": 0.3}, {"mask": mask, "causal": "top_left"}, {"causal": "bottom_right", "scale": -2.0}):
        y = ref.softmax(x, **kw)
        def loss():
            return float((ref.softmax(x, **kw) * dy).sum())
        dx = ref.softmax_backward(dy, y, kw.get("scale", 1.0))
        assert_fd(dx, fd_grad(loss, x), str(kw))
        assert np.all(dx[y == 0] == 0)


def test_softmax_backward_adversarial(backend, simd, dtype):
    """y from the forward on the adversarial rows (+-1e4 logits, -inf entries, length 1, odd widths,
    strided, read-only); masked entries get exactly 0 even where dy holds NaN/Inf."""
    rng = RNG(30)
    for name, x in adversarial_rows(rng, dtype):
        for scale in (1.0, 0.125, -1.5):
            y = qkv.softmax(x, scale=scale)
            dy = rng.standard_normal(x.shape).astype(dtype)
            dy[y == 0] = np.nan if name != "neg_inf" else np.inf  # never read
            got = qkv.softmax_backward(dy, y, scale=scale)
            want = ref.softmax_backward(dy, y, scale)
            assert_bound(got, want, softmax_bound(dy, y, scale), f"{name} scale={scale}")
            assert np.all(got[y == 0] == 0)


def test_softmax_backward_masks_and_axis(backend, simd, dtype):
    rng = RNG(31)
    x = rng.standard_normal((2, 3, 9, 40)).astype(dtype)
    mask = rng.random((2, 1, 9, 40)) < 0.6
    mask[0, 0, 3] = False  # a fully masked row
    y = qkv.softmax(x, mask=mask, causal=True, scale=0.7)
    dy = rng.standard_normal(x.shape).astype(dtype)
    got = qkv.softmax_backward(dy, y, scale=0.7)
    assert_bound(got, ref.softmax_backward(dy, y, 0.7), softmax_bound(dy, y, 0.7), "masked")
    assert np.all(got[0, :, 3] == 0) and np.all(got[y == 0] == 0)
    # axis: the same as moving the axis last
    y1 = qkv.softmax(x, axis=1)
    g1 = qkv.softmax_backward(dy, y1, axis=1)
    g_last = np.moveaxis(qkv.softmax_backward(np.moveaxis(dy, 1, -1), np.moveaxis(y1, 1, -1)), -1, 1)
    np.testing.assert_array_equal(g1, g_last)
    # 1-D
    v = qkv.softmax(x[0, 0, 0])
    assert_bound(qkv.softmax_backward(dy[0, 0, 0], v), ref.softmax_backward(dy[0, 0, 0], v),
                 softmax_bound(dy[0, 0, 0], v, 1.0), "1-D")


# ---------------------------------------------------------------------------------------------
# linear


def linear_bounds(dy, x, w, activation, preact):
    """GEMM bounds as the forward's: 16 eps (inner dim * max|a| * max|b| + |ref|), with g = dy * act'(pre)."""
    g = ref._act_backward64(dy.astype(np.float64), None if preact is None else preact.astype(np.float64), activation)
    g = g.reshape(-1, w.shape[1])
    x2 = x.astype(np.float64).reshape(-1, w.shape[0])
    M, (K, N) = g.shape[0], w.shape
    e = 16 * eps(x.dtype)
    gmax = np.abs(g).max()
    return (e * N * gmax * np.abs(w).max(), e * M * np.abs(x2).max() * gmax, e * np.abs(g).sum(0))


@pytest.mark.parametrize("activation", [None, "gelu_tanh", "gelu", "relu"])
def test_linear_reference_matches_finite_differences(activation):
    rng = RNG(4)
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((5, 4)), rng.standard_normal(4)
    dy = rng.standard_normal((2, 3, 4))
    def loss():
        return float((ref.linear(x, w, b, activation) * dy).sum())
    _, pre = ref.linear(x, w, b, activation, return_preact=True)
    assert np.abs(pre).min() > 1e-4  # away from ReLU's kink
    dx, dw, db = ref.linear_backward(dy, x, w, b, activation, pre)
    assert_fd(dx, fd_grad(loss, x), "dx")
    assert_fd(dw, fd_grad(loss, w), "dw")
    assert_fd(db, fd_grad(loss, b), "db")


@pytest.mark.parametrize("activation", [None, "gelu_tanh", "gelu", "relu"])
@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_linear_backward(backend, simd, dtype, activation, layout, with_bias):
    rng = RNG(40)
    for xshape, N in (((7, 33), 17), ((2, 5, 64), 130), ((1, 9), 1), ((9,), 5)):
        K = xshape[-1]
        x = rng.standard_normal(xshape).astype(dtype)
        w = rng.standard_normal((K, N)).astype(dtype)
        w = np.asfortranarray(w) if layout == "F" else w
        b = rng.standard_normal(N).astype(dtype) if with_bias else None
        y, pre = qkv.linear(x, w, b, activation, return_preact=True)
        np.testing.assert_array_equal(y, qkv.linear(x, w, b, activation))
        if activation is None:
            assert pre is y
        else:
            np.testing.assert_array_equal(pre, qkv.linear(x, w, b))
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx, dw, db = qkv.linear_backward(dy, x, w, b, activation, preact=pre)
        rdx, rdw, rdb = ref.linear_backward(dy, x, w, b, activation, pre)
        bx, bw, bb = linear_bounds(dy, x, w, activation, pre)
        assert dx.shape == x.shape and dw.shape == w.shape and dx.dtype == dw.dtype == dtype
        assert dw.flags.f_contiguous == (layout == "F" and N > 1 and K > 1) or dw.flags.c_contiguous
        assert_bound(dx, rdx, bx + 16 * eps(dtype) * np.abs(rdx), f"dx {xshape}")
        assert_bound(dw, rdw, bw + 16 * eps(dtype) * np.abs(rdw), f"dw {xshape}")
        if with_bias:
            assert_bound(db, rdb, bb, f"db {xshape}")
        else:
            assert db is None


def test_linear_backward_layout_and_errors(backend, dtype):
    rng = RNG(41)
    x = rng.standard_normal((6, 8)).astype(dtype)
    w_torch = rng.standard_normal((5, 8)).astype(dtype)  # PyTorch's (out, in)
    dy = rng.standard_normal((6, 5)).astype(dtype)
    dx, dw, _ = qkv.linear_backward(dy, x, w_torch.T)
    assert dw.flags.f_contiguous and dw.shape == (8, 5)  # dw.T is (out, in), C-contiguous like w_torch
    dx2, dw2, _ = qkv.linear_backward(dy, x, np.ascontiguousarray(w_torch.T))
    np.testing.assert_allclose(dw, dw2, rtol=64 * eps(dtype), atol=64 * eps(dtype))
    np.testing.assert_allclose(dx, dx2, rtol=64 * eps(dtype), atol=64 * eps(dtype))
    # a strided (non-contiguous) weight is copied, and its gradient comes back C-contiguous
    wide = rng.standard_normal((8, 10)).astype(dtype)
    _, dws, _ = qkv.linear_backward(dy, x, wide[:, ::2])
    assert dws.flags.c_contiguous and dws.shape == (8, 5)
    with pytest.raises(ValueError, match="needs preact="):
        qkv.linear_backward(dy, x, w_torch.T, None, "gelu")
    with pytest.raises(ValueError, match=r"dy must have shape \(6, 5\)"):
        qkv.linear_backward(dy[:, :4], x, w_torch.T)
    with pytest.raises(ValueError, match=r"preact has shape \(6, 4\) but dy has shape \(6, 5\)"):
        qkv.linear_backward(dy, x, w_torch.T, None, "relu", preact=dy[:, :4])
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        qkv.linear_backward(dy, x, w_torch.T, np.zeros(4, dtype))


def test_relu_backward_nan_and_kink(backend, dtype):
    pre = np.array([[-1.0, 0.0, 2.0, np.nan]], dtype)
    dy = np.array([[np.inf, 5.0, 3.0, 1.0]], dtype)
    x, w = np.ones((1, 2), dtype), np.ones((2, 4), dtype)
    g = qkv.linear_backward(dy, x, w, np.zeros(4, dtype), "relu", preact=pre)[2]
    np.testing.assert_array_equal(g, np.array([0, 0, 3, np.nan], dtype))  # dy ignored where x <= 0


# ---------------------------------------------------------------------------------------------
# embedding


def test_embedding_reference_matches_finite_differences():
    rng = RNG(5)
    table, ids, dout = rng.standard_normal((6, 3)), rng.integers(0, 6, size=(2, 5)), rng.standard_normal((2, 5, 3))
    def loss():
        return float((table[ids] * dout).sum())
    assert_fd(ref.embedding_backward(dout, ids, 6), fd_grad(loss, table), "dtable")


@pytest.mark.parametrize("shape", [(0,), (1,), (4, 9), (2, 3, 40)])
def test_embedding_backward(backend, simd, dtype, shape):
    rng = RNG(50)
    V, C = 23, 37
    ids = rng.integers(0, V, size=shape)
    if ids.size > 4:
        ids.reshape(-1)[:4] = 7  # a repeated id; most of V stays unused
    dout = rng.standard_normal(shape + (C,)).astype(dtype)
    got = qkv.embedding_backward(dout, ids, V)
    want = ref.embedding_backward(dout, ids, V)
    assert got.shape == (V, C) and got.dtype == dtype
    count = np.bincount(ids.reshape(-1), minlength=V)[:, None]
    mass = np.zeros((V, C))
    np.add.at(mass, ids.reshape(-1), np.abs(dout.astype(np.float64)).reshape(-1, C))
    # a sequential sum of n terms: |err| <= n eps sum|terms| (the textbook bound, slightly loosened)
    assert_bound(got, want, count * eps(dtype) * mass + eps(dtype) * np.abs(want), str(shape))
    assert not got[count[:, 0] == 0].any()


def test_embedding_backward_ids_dtypes_and_errors(backend, dtype):
    dout = np.ones((2, 3, 4), dtype)
    ids = np.array([[0, 1, 1], [4, 1, 0]])
    want = ref.embedding_backward(dout, ids, 5)
    for t in (np.int32, np.uint8, np.int16):
        np.testing.assert_array_equal(qkv.embedding_backward(dout, ids.astype(t), 5), want)
    np.testing.assert_array_equal(want[1], 3)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\)"):
        qkv.embedding_backward(dout, ids, 4)
    with pytest.raises(ValueError, match=r"ids must have shape \(2, 3\)"):
        qkv.embedding_backward(dout, ids[:, :2], 5)
    with pytest.raises(TypeError, match="ids must be integers"):
        qkv.embedding_backward(dout, ids.astype(np.float32), 5)
    with pytest.raises(ValueError, match="num_embeddings must be a positive int"):
        qkv.embedding_backward(dout, ids, 0)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 5\)"):
        qkv.embedding_backward(dout, -ids - 1, 5)


# ---------------------------------------------------------------------------------------------
# across the ops: inputs untouched, strided inputs, threads


def test_inputs_unchanged_and_views(backend, dtype):
    rng = RNG(60)
    big = rng.standard_normal((6, 2 * 24)).astype(dtype)
    x = frozen(big[::2, ::2])            # strided, read-only (3, 24)
    dy = frozen(rng.standard_normal((3, 24)).astype(dtype))
    w = frozen(rng.standard_normal(24).astype(dtype))
    W = frozen(rng.standard_normal((24, 24)).astype(dtype).T)  # Fortran order
    y = frozen(qkv.softmax(x))
    _, pre = qkv.linear(x, W, w, "gelu", return_preact=True)
    pre = frozen(pre)
    _, m, r = qkv.layer_norm(x, w, w, return_stats=True)
    m, r = frozen(m), frozen(r)
    ids = frozen(np.array([1, 0, 1]))
    inputs = [x, dy, w, W, y, pre, m, r, ids]
    before = [a.tobytes() for a in inputs]
    xc = np.ascontiguousarray(x)
    got = qkv.layer_norm_backward(dy, x, w, w, mean=m, rstd=r)
    for a, b in zip(got, ref.layer_norm_backward(dy, xc, w, w, 1e-5, m, r)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(qkv.gelu_backward(dy, x), qkv.gelu_backward(np.ascontiguousarray(dy), xc))
    np.testing.assert_array_equal(qkv.softmax_backward(dy, y), qkv.softmax_backward(dy, np.ascontiguousarray(y)))
    got = qkv.linear_backward(dy, x, W, w, "gelu", preact=pre)
    for a, b in zip(got, qkv.linear_backward(dy, xc, W, w, "gelu", preact=np.ascontiguousarray(pre))):
        np.testing.assert_array_equal(a, b)
    qkv.embedding_backward(dy, ids, 2)
    assert [a.tobytes() for a in inputs] == before


def test_same_bits_for_one_and_two_threads(threads):
    """Above every parallel threshold; dweight/dbias/db and the embedding scatter are reductions over
    rows, the rest is row-parallel. linear's dx and dweight are the BLAS's GEMMs, whose bits depend on
    its thread count (OpenBLAS: they do), as for qkv.linear: only its db is ours to compare."""
    rng = RNG(70)
    R, C = 333, 257
    x = rng.standard_normal((R, C)).astype(np.float32)
    dy = rng.standard_normal((R, C)).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    W = rng.standard_normal((C, 190)).astype(np.float32)
    dyl = rng.standard_normal((R, 190)).astype(np.float32)
    _, pre = qkv.linear(x, W, w[:190], "gelu_tanh", return_preact=True)
    y = qkv.softmax(x)
    ids = rng.integers(0, 50, size=R)
    for call in (
        lambda: qkv.layer_norm_backward(dy, x, w, w),
        lambda: (qkv.gelu_backward(dy, x), qkv.gelu_backward(dy, x, "none")),
        lambda: (qkv.softmax_backward(dy, y, scale=0.5),),
        lambda: qkv.linear_backward(dyl, x, W, w[:190], "gelu_tanh", preact=pre)[2:],
        lambda: qkv.linear_backward(dyl, x, W, w[:190])[2:],
        lambda: (qkv.embedding_backward(dy, ids, 50),),
    ):
        same_bits_for_1_and_2_threads(threads, call)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: qkv.gelu_backward(np.zeros(3, np.float32), np.zeros(3, np.float32), "erf"), ValueError,
         "approximate must be 'tanh' or 'none'"),
        (lambda: qkv.gelu_backward(np.zeros(4, np.float32), np.zeros(3, np.float32)), ValueError,
         r"dy has shape \(4,\) but x has shape \(3,\)"),
        (lambda: qkv.gelu_backward([0.0], np.zeros(1, np.float32)), TypeError, "dy must be a NumPy or CuPy array"),
        (lambda: qkv.softmax_backward(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), axis=2),
         ValueError, r"axis 2 is out of range for y of shape \(2, 3\)"),
        (lambda: qkv.softmax_backward(np.zeros((2, 3), np.float64), np.zeros((2, 3), np.float32)), TypeError,
         "dy has dtype float64 but y has dtype float32"),
        (lambda: qkv.softmax_backward(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), scale=np.inf),
         TypeError, "scale must be a finite"),
        (lambda: qkv.layer_norm_backward(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32),
                                         np.zeros(4, np.float32)), ValueError,
         r"weight must have shape \(3,\) to match x of shape \(2, 3\), got \(4,\)"),
        (lambda: qkv.linear_backward(np.zeros((2, 5), np.float32), np.zeros((2, 3), np.float32),
                                     np.zeros((4, 5), np.float32)), ValueError,
         r"x of shape \(2, 3\) has 3 features but weight of shape \(4, 5\) expects 4"),
        (lambda: qkv.linear_backward(np.zeros((2, 5), np.float32), np.zeros((2, 4), np.float32),
                                     np.zeros((4, 5), np.float32), activation="tanh"), ValueError,
         "activation must be one of"),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_numpy_backend_float16():
    """The reference backend also takes float16 (the cuda backend's dtype): statistics in float32."""
    rng = RNG(80)
    x = rng.standard_normal((5, 16)).astype(np.float16)
    with qkv.use_backend("numpy"):
        y, m, r = qkv.layer_norm(x, return_stats=True)
        assert m.dtype == r.dtype == np.float32
        dx, _, _ = qkv.layer_norm_backward(x, x, mean=m, rstd=r)
        loss, d = qkv.cross_entropy(x, np.arange(5), return_grad=True)
    assert dx.dtype == d.dtype == np.float16 and loss.dtype == np.float32


def test_layer_norm_return_stats_with_out(backend, dtype):
    x = RNG(81).standard_normal((3, 20)).astype(dtype)
    out = np.empty_like(x)
    y, m, r = qkv.layer_norm(x, out=out, return_stats=True)
    assert y is out
    np.testing.assert_array_equal(out, qkv.layer_norm(x))


# ---------------------------------------------------------------------------------------------
# out=: the caller's buffers (a training step reuses them), the same bits as fresh results


def test_out_buffers_give_the_same_bits(backend, dtype):
    """Every backward op with out= writes the fresh call's bits into the given arrays (filled with
    NaN first, so a skipped element shows) and returns those arrays; cross_entropy's dlogits can
    replace the logits in place."""
    rng = RNG(90)
    x = rng.standard_normal((2, 5, 24)).astype(dtype)
    dy = rng.standard_normal((2, 5, 24)).astype(dtype)
    w, b = rng.standard_normal(24).astype(dtype), rng.standard_normal(24).astype(dtype)
    W = rng.standard_normal((24, 16)).astype(dtype)
    WT = np.asfortranarray(W)  # a transposed torch weight: dweight comes in its (Fortran) order
    g16 = rng.standard_normal((2, 5, 16)).astype(dtype)
    _, pre = qkv.linear(x, W, b[:16], "gelu_tanh", return_preact=True)
    _, m, r = qkv.layer_norm(x, w, b, return_stats=True)
    ids = rng.integers(0, 7, (2, 5))

    def nans(*shape, order="C"):
        return np.full(shape, np.nan, dtype, order=order)

    def same(got, want, outs):
        for g, e, o in zip(got, want, outs):
            if o is None:
                continue
            assert g is o
            np.testing.assert_array_equal(g, e)

    outs = (nans(2, 5, 24), nans(24), nans(24))
    same(qkv.layer_norm_backward(dy, x, w, b, mean=m, rstd=r, out=outs),
         qkv.layer_norm_backward(dy, x, w, b, mean=m, rstd=r), outs)
    outs = (nans(2, 5, 24), None, nans(24))  # dweight allocated
    same(qkv.layer_norm_backward(dy, x, w, b, out=outs), qkv.layer_norm_backward(dy, x, w, b), outs)
    out = nans(2, 5, 24)
    assert qkv.gelu_backward(dy, x, "none", out=out) is out
    np.testing.assert_array_equal(out, qkv.gelu_backward(dy, x, "none"))
    for weight in (W, WT):
        outs = (nans(2, 5, 24), nans(24, 16, order="F" if weight is WT else "C"), nans(16))
        work = nans(2, 5, 16)
        same(qkv.linear_backward(g16, x, weight, b[:16], "gelu_tanh", preact=pre, out=outs, work=work),
             qkv.linear_backward(g16, x, weight, b[:16], "gelu_tanh", preact=pre), outs)
    out = nans(7, 24)
    assert qkv.embedding_backward(dy, ids, 7, out=out) is out
    np.testing.assert_array_equal(out, qkv.embedding_backward(dy, ids, 7))
    logits = 4 * x
    t = ids.copy()
    t[1, 2] = -1
    want_loss, want = qkv.cross_entropy(logits, t, return_grad=True)
    inplace = logits.copy()
    loss, got = qkv.cross_entropy(inplace, t, return_grad=True, out=inplace)
    assert got is inplace and loss == want_loss
    np.testing.assert_array_equal(got, want)
    q, k, v = (rng.standard_normal((1, 2, 6, 8)).astype(dtype) for _ in range(3))
    o, lse = qkv.attention(q, k, v, causal=True, return_lse=True)
    do = rng.standard_normal(o.shape).astype(dtype)
    outs = (nans(1, 2, 6, 8), None, nans(1, 2, 6, 8))
    same(qkv.attention_backward(do, q, k, v, o, lse, causal=True, grads_out=outs),
         qkv.attention_backward(do, q, k, v, o, lse, causal=True), outs)


def test_out_buffer_errors():
    f = np.float32
    x, dy, W = np.zeros((4, 3), f), np.zeros((4, 5), f), np.zeros((3, 5), f)
    with pytest.raises(TypeError, match=r"linear_backward: out must be a tuple \(dx, dweight, dbias\)"):
        qkv.linear_backward(dy, x, W, out=np.zeros((4, 3), f))
    with pytest.raises(ValueError, match=r"out\[1\] \(dweight\) has shape \(5, 3\) and dtype float32; expected "
                                         r"\(3, 5\) float32"):
        qkv.linear_backward(dy, x, W, out=(None, np.zeros((5, 3), f), None))
    with pytest.raises(ValueError, match=r"out\[1\] \(dweight\) must be F-contiguous"):
        qkv.linear_backward(dy, x, np.asfortranarray(W), out=(None, np.zeros((3, 5), f), None))
    with pytest.raises(ValueError, match=r"out\[2\] \(dbias\) must be None: that gradient is not computed"):
        qkv.linear_backward(dy, x, W, out=(None, None, np.zeros(5, f)))
    with pytest.raises(ValueError, match=r"out\[0\] \(dx\) overlaps x"):
        qkv.linear_backward(dy, x, W, out=(x, None, None))
    shared = np.zeros((2, 4, 3), f)
    with pytest.raises(ValueError, match=r"out\[1\] \(dweight\) overlaps dx"):
        qkv.layer_norm_backward(x, x, np.ones(3, f), out=(shared[0], shared[0, 1], None))
    with pytest.raises(ValueError, match=r"work has shape \(4, 3\)"):
        qkv.linear_backward(dy, x, W, activation="gelu_tanh", preact=dy, work=np.zeros((4, 3), f))
    with pytest.raises(ValueError, match="gelu_backward: out must be C-contiguous"):
        qkv.gelu_backward(x, x, out=np.zeros((3, 4), f).T)
    with pytest.raises(ValueError, match="embedding_backward: out has shape"):
        qkv.embedding_backward(x, np.zeros(4, np.int64), 2, out=np.zeros((3, 3), f))
    with pytest.raises(ValueError, match="cross_entropy: out= is the destination of dlogits; it needs return_grad"):
        qkv.cross_entropy(dy, np.zeros(4, np.int64), out=dy)
    with pytest.raises(ValueError, match="cross_entropy: out overlaps logits"):
        qkv.cross_entropy(dy, np.zeros(4, np.int64), return_grad=True, out=dy[:, :])
