"""Property-based tests (hypothesis): random shapes, masks and scales for the row ops vs the oracle."""

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

import qkv
from qkv import _reference as ref
from test_numerics import attention_bound  # README's accuracy bound for attention

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


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31), B=st.integers(1, 2), Hkv=st.integers(1, 3), group=st.integers(1, 3),
       Lq=st.integers(1, 40), Lk=st.integers(1, 90), D=st.sampled_from([1, 3, 16, 33, 64, 80]),
       Dv=st.sampled_from([1, 8, 64]), dtype=dtypes, causal=st.sampled_from([False, True, "top_left"]),
       mask=st.sampled_from([None, "bool", "additive", "kv_lengths"]), big=st.booleans(), strided=st.booleans())
def test_attention(seed, B, Hkv, group, Lq, Lk, D, Dv, dtype, causal, mask, big, strided):
    """Random shapes (GQA ratios, L = 1, awkward D), masks, causal modes, strided views and large
    logits: out, lse and weights against the oracle within README's bound (whose sigma grows with
    the logits); masked weights exactly 0."""
    rng = np.random.default_rng(seed)
    Hq = Hkv * group
    s = 8.0 if big else 1.0
    q = (rng.standard_normal((B, Lq, Hq, D)) * s).astype(dtype).transpose(0, 2, 1, 3)  # (B, H, L, D) view
    if not strided:
        q = np.ascontiguousarray(q)
    k = (rng.standard_normal((B, Hkv, Lk, D)) * s).astype(dtype)
    v = rng.standard_normal((B, Hkv, Lk, Dv)).astype(dtype)
    kw = {}
    if mask == "bool":
        kw["mask"] = rng.random((B, 1, Lq, Lk)) > 0.3
    elif mask == "additive":
        kw["mask"] = np.where(rng.random((Lq, Lk)) > 0.3, rng.standard_normal((Lq, Lk)), -np.inf).astype(dtype)
    elif mask == "kv_lengths":
        kw["kv_lengths"] = rng.integers(0, Lk + 1, B)
    out, lse, w = qkv.attention(q, k, v, causal=causal, return_lse=True, return_weights=True, **kw)
    mode = {False: None, True: "bottom_right", "top_left": "top_left"}[causal]
    want = ref.attention(q, k, v, 1.0 / np.sqrt(D), causal=mode, mask=kw.get("mask"),
                         kv_lengths=kw.get("kv_lengths"), return_lse=True, return_weights=True)
    bound = attention_bound(q, k, v, 1.0 / np.sqrt(D), mask=kw.get("mask"), causal=mode,
                            kv_lengths=kw.get("kv_lengths"))
    for name, got, w_, b in zip(("out", "lse", "weights"), (out, lse, w), want, bound):
        assert_close(got, w_, k=64, scale=b, err_msg=name)
    assert np.all(w[want[2] == 0] == 0)
    # without lse/weights a faster path may run: same answer to rounding
    assert_close(qkv.attention(q, k, v, causal=causal, **kw), want[0], k=64, scale=bound[0], err_msg="out, fast path")
