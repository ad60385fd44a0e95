"""qkv.layer_norm on every backend against the oracle."""

import numpy as np
import pytest
from conftest import adversarial_layer_norm_inputs, assert_close

import qkv
from qkv import _reference as ref


@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_adversarial(backend, simd, dtype, affine):
    rng = np.random.default_rng(10)
    for name, x, w, b in adversarial_layer_norm_inputs(rng, dtype, affine):
        got = qkv.layer_norm(x, w, b, eps=1e-5)
        # the statistics cost ~sqrt(C) ulp; the result is O(|w| * 3) in magnitude
        assert_close(got, ref.layer_norm(x, w, b, eps=1e-5), k=64, scale=4.0, err_msg=name)


@pytest.mark.parametrize("shape", [(1, 1), (7, 768), (2, 3, 384), (5, 1000)])
def test_shapes(backend, simd, dtype, shape):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w = rng.standard_normal(shape[-1]).astype(dtype)
    b = rng.standard_normal(shape[-1]).astype(dtype)
    assert_close(qkv.layer_norm(x, w, b), ref.layer_norm(x, w, b), k=64, scale=4.0)


def test_offset_data_no_cancellation(backend, dtype):
    """Large mean, small variance: the two-pass variance stays accurate."""
    x = (1000.0 + np.random.default_rng(12).standard_normal((4, 256))).astype(dtype)
    got = qkv.layer_norm(x, eps=0.0)
    tol = 2e-3 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(got, ref.layer_norm(x, eps=0.0), atol=tol)


def test_nan_propagates(backend, dtype):
    x = np.ones((3, 9), dtype)
    x[1, 2] = np.nan
    got = qkv.layer_norm(x)
    assert np.isnan(got[1]).all() and not np.isnan(got[[0, 2]]).any()


def test_constant_rows_with_zero_eps(backend, dtype):
    x = np.full((2, 8), 3.0, dtype)
    got = qkv.layer_norm(x, eps=0.0)
    assert np.isnan(got).all()  # 0/0, as in the oracle and in PyTorch
    assert np.array_equal(np.isnan(ref.layer_norm(x, eps=0.0)), np.isnan(got))


def test_out(backend, dtype):
    x = np.random.default_rng(13).standard_normal((4, 10)).astype(dtype)
    out = np.empty_like(x)
    assert qkv.layer_norm(x, out=out) is out
    assert_close(out, ref.layer_norm(x), k=64, scale=4.0)
