"""qkv.cross_entropy: the fused loss + dlogits, on every backend and SIMD level, against the float64
reference, and the reference against central finite differences of its own loss.

Bounds (README's accuracy table): loss 16 eps (1 + |loss|); dlogits elementwise
16 eps ((1 + |x - max|) p + onehot) / n_valid + floor: exp turns the rounding of x - max into a
relative error of |x - max| ulp (the oracle starts from the same float inputs, exactly), and the
one-hot subtraction p - 1 costs an ulp of 1.
"""

import numpy as np
import pytest
from conftest import adversarial_rows, assert_bound, assert_fd, eps, fd_grad, frozen
from test_backward_rows import same_bits_for_1_and_2_threads

import qkv
from qkv import _reference as ref

RNG = np.random.default_rng


def bounds(logits, targets, ignore_index, loss):
    x = logits.astype(np.float64).reshape(-1, logits.shape[-1])
    t = np.asarray(targets).reshape(-1)
    valid = t != ignore_index
    n = max(int(valid.sum()), 1)
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(np.where(np.isfinite(x), x, -np.inf), axis=-1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        p = np.exp(np.minimum(x - m, 0.0))
        p = np.where(np.isfinite(x), p / p.sum(-1, keepdims=True), 0.0)
    onehot = np.zeros_like(x)
    onehot[np.nonzero(valid)[0], t[valid]] = 1
    e = eps(logits.dtype)
    floor = 1e-300 if logits.dtype == np.float64 else 1e-37
    with np.errstate(invalid="ignore"):
        g = 16 * e * ((1 + np.abs(np.where(np.isfinite(x), x - m, 0))) * p + onehot) / n + floor / n
    g = np.where(valid[:, None], g, 0.0).reshape(logits.shape)
    return 16 * e * (1 + abs(float(loss))), g


def check(logits, targets, ignore_index=-1, what=""):
    loss, d = qkv.cross_entropy(logits, targets, ignore_index, return_grad=True)
    rloss, rd = ref.cross_entropy(logits, targets, ignore_index, return_grad=True)
    sd = np.float64 if logits.dtype == np.float64 else np.float32
    assert loss.shape == () and loss.dtype == sd and d.shape == logits.shape and d.dtype == logits.dtype
    bl, bg = bounds(logits, targets, ignore_index, rloss)
    assert_bound(loss, rloss, bl, f"loss {what}")
    assert_bound(d, rd, bg, f"dlogits {what}")
    # loss only: the same loss, bit for bit
    assert qkv.cross_entropy(logits, targets, ignore_index).tobytes() == loss.tobytes()
    return loss, d


def test_reference_matches_finite_differences():
    rng = RNG(0)
    x = rng.standard_normal((4, 7)) * 3
    x[2, 1] = -np.inf  # a masked logit: no gradient
    t = np.array([3, -1, 0, 6])
    def loss():
        return float(ref.cross_entropy(x, t))
    l, g = ref.cross_entropy(x, t, return_grad=True)
    fin = np.isfinite(x)
    assert_fd(g[fin], fd_grad(loss, x)[fin], "dlogits")
    assert g[2, 1] == 0 and not g[1].any()
    # the definition: mean over the non-ignored rows of logsumexp - x[target]
    lse = np.log(np.exp(x).sum(-1))
    np.testing.assert_allclose(l, np.mean((lse - x[np.arange(4), np.maximum(t, 0)])[[0, 2, 3]]), rtol=1e-14)


@pytest.mark.parametrize("V", [1, 2, 7, 16, 17, 33, 511, 512, 513, 3000])
def test_random(backend, simd, dtype, V):
    rng = RNG(V)
    x = (rng.standard_normal((5, 3, V)) * 4).astype(dtype)
    t = rng.integers(0, V, size=(5, 3))
    t[0, 1] = -1
    check(x, t, what=f"V={V}")


def test_adversarial_rows(backend, simd, dtype):
    """+-1e4 logits, -inf entries, constant and tiny rows, length 1 and odd widths, strided, read-only
    and transposed logits, each with an ignored row."""
    rng = RNG(1)
    for name, x in adversarial_rows(rng, dtype):
        V = x.shape[-1]
        t = rng.integers(0, V, size=x.shape[:-1])
        t.reshape(-1)[0] = -1
        if name == "neg_inf":
            t.reshape(-1)[1] = 5  # a target whose logit is -inf: loss +inf, gradient still finite
        loss, d = check(x, t, what=name)
        assert np.isfinite(d).all()
        assert not d.reshape(-1, V)[0].any()
        if name == "neg_inf":
            assert loss == np.inf
            hidden = (x == -np.inf).reshape(-1, V)
            rows = np.arange(1, hidden.shape[0])
            hidden[rows, t.reshape(-1)[1:]] = False  # a target's entry is p - 1 = -1 / n_valid
            assert np.all(d.reshape(-1, V)[hidden] == 0)
            assert np.all(d.reshape(-1, V)[rows, t.reshape(-1)[1:]] < 0)


def test_sorted_row_and_large_vocab(backend, dtype):
    """A row whose max grows block after block (the online rescaling) and a GPT-2-sized vocabulary."""
    V = 50257
    rng = RNG(2)
    x = np.stack([np.linspace(-30, 30, V), rng.standard_normal(V) * 10, np.full(V, 1e4)]).astype(dtype)
    check(x, np.array([V - 1, 17, 0]), what="sorted/large V")


def test_nan_and_inf_rows(backend, dtype):
    x = RNG(3).standard_normal((4, 9)).astype(dtype)
    x[0, 3] = np.nan       # NaN: the row's loss and gradient are NaN
    x[1, 4] = np.inf       # +inf: likewise
    x[2, :] = -np.inf      # no mass at all: target logit -inf, loss +inf, gradient -onehot / n
    t = np.array([1, 2, 5, 0])
    loss, d = qkv.cross_entropy(x, t, return_grad=True)
    assert np.isnan(loss)
    assert np.isnan(d[:2]).all() and np.isfinite(d[2:]).all()
    np.testing.assert_array_equal(d[2], np.eye(9, dtype=dtype)[5] * dtype(-0.25))
    l3, d3 = check(x[2:], t[2:])
    assert l3 == np.inf
    # the same NaN row, ignored: nothing of it reaches the loss or the gradient
    t_ign = np.array([-1, -1, 5, 0])
    l4, d4 = check(x, t_ign)
    assert l4 == np.inf and not d4[:2].any()
    assert np.isfinite(qkv.cross_entropy(x[3:], t[3:]))


def test_ignore_index(backend, dtype):
    rng = RNG(4)
    x = rng.standard_normal((6, 11)).astype(dtype)
    t = np.array([3, 7, 7, 0, 10, 7])
    loss, d = check(x, t, ignore_index=7, what="ignore 7")  # a real class id can be the ignored one
    assert not d[[1, 2, 5]].any()
    keep = [0, 3, 4]
    l2, d2 = qkv.cross_entropy(x[keep], t[keep], return_grad=True)
    np.testing.assert_allclose(loss, l2, rtol=4 * eps(dtype))
    np.testing.assert_allclose(d[keep] * 3, d2 * 3, rtol=16 * eps(dtype), atol=16 * eps(dtype) / 3)
    # every target ignored: loss 0 and zero gradients (PyTorch: NaN)
    l0, d0 = check(x, np.full(6, -100), ignore_index=-100, what="all ignored")
    assert l0 == 0 and not d0.any()


def test_shapes_and_target_dtypes(backend, dtype):
    rng = RNG(5)
    x = rng.standard_normal(13).astype(dtype)
    check(x, np.array(4), what="1-D logits, 0-d target")
    x = rng.standard_normal((2, 3, 4, 13)).astype(dtype)
    t = rng.integers(0, 13, size=(2, 3, 4))
    want = qkv.cross_entropy(x, t, return_grad=True)
    for td in (np.int32, np.uint8, np.int16, np.uint64):
        got = qkv.cross_entropy(x, t.astype(td), return_grad=True)
        assert got[0].tobytes() == want[0].tobytes() and got[1].tobytes() == want[1].tobytes()


def test_inputs_unchanged(backend, dtype):
    rng = RNG(6)
    x = frozen(rng.standard_normal((8, 2 * 40)).astype(dtype)[:, ::2])
    t = frozen(rng.integers(0, 40, size=8))
    before = (x.tobytes(), t.tobytes())
    qkv.cross_entropy(x, t, return_grad=True)
    assert (x.tobytes(), t.tobytes()) == before


def test_same_bits_for_one_and_two_threads(threads):
    rng = RNG(7)
    x = rng.standard_normal((300, 1000)).astype(np.float32) * 5
    t = rng.integers(0, 1000, size=300)
    t[::7] = -1
    same_bits_for_1_and_2_threads(threads, lambda: qkv.cross_entropy(x, t, return_grad=True))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: qkv.cross_entropy(np.zeros((3, 4), np.float32), np.zeros(4, np.int64)), ValueError,
         r"targets must have shape \(3,\), got \(4,\)"),
        (lambda: qkv.cross_entropy(np.zeros((3, 4), np.float32), np.zeros(3, np.float32)), TypeError,
         "targets must be integers"),
        (lambda: qkv.cross_entropy(np.zeros((3, 4), np.float32), np.array([0, 4, 1])), ValueError,
         r"targets must lie in \[0, 4\) \(logits \(3, 4\)\) or equal ignore_index -1, got 4"),
        (lambda: qkv.cross_entropy(np.zeros((3, 4), np.float32), np.array([0, -2, 1])), ValueError,
         "got -2"),
        (lambda: qkv.cross_entropy(np.zeros((3, 4), np.float32), np.zeros(3, int), ignore_index=1.5), TypeError,
         "ignore_index must be an int"),
        (lambda: qkv.cross_entropy(np.zeros((3, 0), np.float32), np.zeros(3, int)), ValueError, "empty dimension"),
        (lambda: qkv.cross_entropy(np.zeros((3, 4), np.int32), np.zeros(3, int)), TypeError, "logits has dtype int32"),
        (lambda: qkv.cross_entropy([[0.0]], np.zeros(1, int)), TypeError, "logits must be a NumPy or CuPy array"),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
