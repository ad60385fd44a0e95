"""Property-based tests (hypothesis): random shapes, masks and scales for the row ops vs the oracle."""

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

import qkv
from qkv import _reference as ref

SETTINGS = settings(max_examples=60, deadline=None)
shapes = st.lists(st.integers(1, 9), min_size=1, max_size=3).flatmap(
    lambda lead: st.integers(1, 70).map(lambda n: tuple(lead) + (n,))
)
dtypes = st.sampled_from([np.float32, np.float64])


@SETTINGS
@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**31), scale=st.floats(-4, 4),
       causal=st.sampled_from([False, True, "top_left"]), masked=st.booleans())
def test_softmax(shape, dtype, seed, scale, causal, masked):
    rng = np.random.default_rng(seed)
    if causal and len(shape) < 2:
        shape = (3,) + shape
    x = (rng.standard_normal(shape) * rng.choice([1, 30])).astype(dtype)
    mask = rng.random(shape[-2:] if len(shape) >= 2 else shape) > 0.3 if masked else None
    got = qkv.softmax(x, mask=mask, causal=causal, scale=scale)
    mode = {False: None, True: "bottom_right", "top_left": "top_left"}[causal]
    assert_close(got, ref.softmax(x, mask=mask, causal=mode, scale=scale), k=128)


@SETTINGS
@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**31))
def test_layer_norm(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 5 + 2).astype(dtype)
    w = rng.standard_normal(shape[-1]).astype(dtype)
    b = rng.standard_normal(shape[-1]).astype(dtype)
    assert_close(qkv.layer_norm(x, w, b), ref.layer_norm(x, w, b), k=128, scale=4.0)


@SETTINGS
@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**31), n_out=st.integers(1, 40),
       act=st.sampled_from([None, "gelu_tanh", "gelu", "relu"]), bias=st.booleans())
def test_linear(shape, dtype, seed, n_out, act, bias):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((shape[-1], n_out)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype) if bias else None
    scale = float(np.abs(x).max() * np.abs(w).max() * shape[-1])
    assert_close(qkv.linear(x, w, b, act), ref.linear(x, w, b, act), k=16, scale=scale)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@SETTINGS
@given(x=st.lists(st.floats(-12, 12, width=32), min_size=1, max_size=50))
def test_gelu(approximate, x):
    x = np.array(x, dtype=np.float32)
    assert_close(qkv.gelu(x, approximate), ref.gelu(x, approximate), k=64, scale=1e-20)
