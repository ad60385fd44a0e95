"""qkv.linear and qkv.mlp on every backend against the oracle (float64 products)."""

import numpy as np
import pytest
from conftest import assert_close

import qkv
from qkv import _reference as ref

ACTIVATIONS = [None, "gelu_tanh", "gelu", "relu"]


def _tol(x, w):
    """A GEMM of inner size K loses about sqrt(K) ulp of sum |x||w|."""
    return float(np.abs(x).max() * np.abs(w).max() * x.shape[-1])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 5), (2, 3, 17, 33), (64, 96, 200)])
def test_linear(backend, simd, dtype, activation, shape):
    rng = np.random.default_rng(30)
    *lead, K, N = shape
    x = rng.standard_normal((*lead, K)).astype(dtype)
    w = rng.standard_normal((K, N)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    got = qkv.linear(x, w, b, activation)
    assert got.shape == (*lead, N) and got.dtype == dtype
    assert_close(got, ref.linear(x, w, b, activation), k=8, scale=_tol(x, w))


@pytest.mark.parametrize("layout", ["c", "f", "strided_rows", "noncontig"])
def test_weight_layouts(backend, dtype, layout):
    rng = np.random.default_rng(31)
    x = rng.standard_normal((9, 12)).astype(dtype)
    w_out_in = rng.standard_normal((20, 12)).astype(dtype)  # PyTorch layout (out, in)
    w = {
        "c": np.ascontiguousarray(w_out_in.T),
        "f": w_out_in.T,  # column-major (in, out): no copy
        "strided_rows": np.ascontiguousarray(w_out_in.T.repeat(2, axis=1))[:, ::2],
        "noncontig": rng.standard_normal((24, 40)).astype(dtype)[::2, ::2],
    }[layout]
    got = qkv.linear(x, w)
    assert_close(got, ref.linear(x, w), k=8, scale=_tol(x, w))


def test_no_bias_and_noncontiguous_x(backend, dtype):
    rng = np.random.default_rng(32)
    x = rng.standard_normal((10, 30)).astype(dtype)[:, ::2]
    w = rng.standard_normal((15, 4)).astype(dtype)
    assert_close(qkv.linear(x, w), ref.linear(x, w), k=8, scale=_tol(x, w))


def test_nan_propagates(backend, dtype):
    x = np.ones((3, 4), dtype)
    x[1, 0] = np.nan
    w = np.ones((4, 5), dtype)
    for act in ACTIVATIONS:
        got = qkv.linear(x, w, activation=act)
        assert np.isnan(got[1]).all() and not np.isnan(got[[0, 2]]).any(), act


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu", "relu"])
def test_mlp(backend, dtype, activation):
    rng = np.random.default_rng(33)
    x = rng.standard_normal((2, 5, 16)).astype(dtype)
    w1 = (rng.standard_normal((16, 64)) / 4).astype(dtype)
    b1 = rng.standard_normal(64).astype(dtype)
    w2 = (rng.standard_normal((64, 16)) / 8).astype(dtype)
    b2 = rng.standard_normal(16).astype(dtype)
    got = qkv.mlp(x, w1, b1, w2, b2, activation=activation)
    want = ref.linear(ref.linear(x, w1, b1, activation), w2, b2)
    assert_close(got, want, k=32, scale=_tol(x, w1) * _tol(np.ones((1, 64)), w2))


def test_out(backend, dtype):
    rng = np.random.default_rng(34)
    x = rng.standard_normal((4, 8)).astype(dtype)
    w = rng.standard_normal((8, 3)).astype(dtype)
    out = np.empty((4, 3), dtype)
    assert qkv.linear(x, w, out=out) is out
    assert_close(out, ref.linear(x, w), k=8, scale=_tol(x, w))
