"""qkv.softmax on every backend against the oracle: masks, causal modes, adversarial values."""

import numpy as np
import pytest
from conftest import adversarial_rows, assert_close

import qkv
from qkv import _reference as ref


def check_probabilities(p, hidden):
    """Masked entries are exactly 0; rows with something visible sum to 1 (or are NaN)."""
    assert np.all(p[hidden] == 0), "masked probabilities must be exactly 0"
    sums = p.sum(axis=-1)
    live = ~hidden.all(axis=-1) & ~np.isnan(sums)
    tol = 64 * np.finfo(p.dtype).eps * p.shape[-1] ** 0.5
    assert np.all(np.abs(sums[live] - 1) <= tol)
    assert np.all(sums[hidden.all(axis=-1)] == 0), "fully masked rows must be zeros"


def test_adversarial(backend, simd, dtype):
    rng = np.random.default_rng(0)
    for name, x in adversarial_rows(rng, dtype):
        got = qkv.softmax(x, scale=0.7)
        want = ref.softmax(x, scale=0.7)
        assert got.dtype == x.dtype and got.shape == x.shape
        assert_close(got, want, k=64, err_msg=name)
        check_probabilities(got, np.isneginf(x) if x.size else np.zeros_like(x, bool))


@pytest.mark.parametrize("causal", [True, "bottom_right", "top_left"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (3, 11), (11, 3), (2, 4, 17, 17), (2, 9, 40)])
def test_causal(backend, simd, dtype, causal, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    got = qkv.softmax(x, causal=causal)
    mode = "top_left" if causal == "top_left" else "bottom_right"
    assert_close(got, ref.softmax(x, causal=mode), k=64)
    hidden = np.broadcast_to(~ref.causal_keep(shape[-2], shape[-1], mode), shape)
    check_probabilities(got, hidden)


@pytest.mark.parametrize(
    "mask_shape", [(17,), (1, 17), (6, 1), (6, 17), (3, 1, 17), (3, 6, 17), (2, 3, 6, 17), (1, 1, 1, 1), ()]
)
def test_bool_mask_broadcast(backend, simd, dtype, mask_shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 6, 17)).astype(dtype)
    mask = rng.random(mask_shape) > 0.4
    got = qkv.softmax(x, mask=mask, scale=1.3)
    assert_close(got, ref.softmax(x, mask=mask, scale=1.3), k=64)
    check_probabilities(got, ~np.broadcast_to(mask, x.shape))


def test_additive_mask(backend, simd, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 23)).astype(dtype)
    m = rng.standard_normal((6, 23))
    m[m > 0.8] = -np.inf
    m[0] = -np.inf  # row 0 fully masked
    got = qkv.softmax(x, mask=m, causal="top_left")
    assert_close(got, ref.softmax(x, mask=m.astype(dtype), causal="top_left"), k=64)
    hidden = np.broadcast_to(np.isneginf(m) | ~ref.causal_keep(6, 23, "top_left"), x.shape)
    check_probabilities(got, hidden)


def test_fully_masked_rows_are_zero_not_nan(backend, simd, dtype):
    x = np.ones((3, 8), dtype)
    mask = np.zeros((3, 8), bool)
    mask[1, 2] = True
    got = qkv.softmax(x, mask=mask)
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(got[0], 0)
    np.testing.assert_array_equal(got[1], np.eye(8, dtype=dtype)[2])
    all_neginf = np.full((2, 5), -np.inf, dtype)
    np.testing.assert_array_equal(qkv.softmax(all_neginf), 0)


def test_nan_in_masked_positions_is_ignored(backend, simd, dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 33)).astype(dtype)
    mask = rng.random((5, 33)) > 0.5
    mask[:, 0] = True
    poisoned = x.copy()
    poisoned[~mask] = np.nan
    poisoned[~mask][::2] = np.inf
    clean = qkv.softmax(x, mask=mask)
    got = qkv.softmax(poisoned, mask=mask)
    np.testing.assert_array_equal(got, clean)
    add = np.where(mask, 0.0, -np.inf).astype(dtype)
    np.testing.assert_array_equal(qkv.softmax(poisoned, mask=add), clean)


def test_nan_visible_gives_nan_row(backend, simd, dtype):
    x = np.zeros((3, 9), dtype)
    x[1, 4] = np.nan
    mask = np.ones((3, 9), bool)
    mask[1, 7] = False
    got = qkv.softmax(x, mask=mask)
    assert np.isnan(got[1][mask[1]]).all() and got[1, 7] == 0
    assert not np.isnan(got[[0, 2]]).any()
    assert_close(got, ref.softmax(x, mask=mask))


@pytest.mark.parametrize("axis", [0, 1, -2])
def test_axis(backend, dtype, axis):
    x = np.random.default_rng(5).standard_normal((4, 7, 9)).astype(dtype)
    got = qkv.softmax(x, axis=axis)
    want = ref.softmax(np.moveaxis(x, axis, -1))
    assert_close(got, np.moveaxis(want, -1, axis), k=64)


def test_out(backend, dtype):
    x = np.random.default_rng(6).standard_normal((4, 10)).astype(dtype)
    out = np.empty_like(x)
    got = qkv.softmax(x, out=out)
    assert got is out
    assert_close(out, ref.softmax(x), k=64)


def test_large_rows_parallel(dtype):
    """Big enough to take the threaded path: 1 thread and 2 threads give identical bits."""
    x = np.random.default_rng(7).standard_normal((96, 1000)).astype(dtype)
    mask = np.random.default_rng(8).random((96, 1000)) > 0.1
    qkv.set_num_threads(1)
    try:
        one = qkv.softmax(x, mask=mask, causal=True)
    finally:
        qkv.set_num_threads(None)
    qkv.set_num_threads(2)
    try:
        two = qkv.softmax(x, mask=mask, causal=True)
    finally:
        qkv.set_num_threads(None)
    np.testing.assert_array_equal(one, two)
    assert_close(two, ref.softmax(x, mask=mask, causal="bottom_right"), k=64)
