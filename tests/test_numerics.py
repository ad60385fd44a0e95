"""Numerics at the edges: attention within README's accuracy bound when scores are large (long
fp32 rows with logits up to +-50, ALiBi-style additive biases down to -300); softmax of finite
inputs never returns NaN, even when scores overflow."""

import importlib

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qkv
from qkv import _reference as ref

cpu_attention = importlib.import_module("qkv._cpu.attention")


def attention_bound(q, k, v, scale, mask=None, causal=None, kv_lengths=None):
    """README's accuracy bound for attention: |x - ref| <= 64 eps (M (1 + sigma / 8) + |ref|).

    Returns the M (1 + sigma / 8) term for (out, lse, weights), shaped to broadcast against them;
    use it as assert_close(x, ref, k=64, scale=...). sigma (B, Hq, Lq) is, per query row, the largest
    magnitude its visible scores are computed from: scale * sum_d |q_d k_d| + |mask| (at least
    |scale q.k + mask|, and it also counts cancellation inside the dot product and against the
    mask). M is max|v| for out and 1 for lse and weights.

    Why this form (first order): a computed score carries a few roundings of the magnitude it is
    computed from, |s^ - s| <~ 4 (eps/2) sigma (the dot product, + mask, the exp2 paths' * log2 e,
    - max), so each exp(s - m) and their sum l is off by a relative 4 eps sigma at most; out =
    sum_j p_j v_j / l then moves by at most that times sum_j p_j |v_j - out| <= 2 max|v|: 8 eps sigma
    max|v|. lse = m + log l and the weights p_j / l move by 8 eps sigma (absolute, relative). What
    does not grow with sigma (the accumulation of P V, exp's own ulps) is the 64 eps (M + |ref|)
    that holds for O(1) scores.
    """
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    ka = np.repeat(np.abs(k.astype(np.float64)), Hq // Hkv, axis=1)  # (B, Hq, Lk, D)
    t = abs(scale) * np.einsum("bhqd,bhkd->bhqk", np.abs(q.astype(np.float64)), ka)  # (B, Hq, Lq, Lk)
    visible = np.ones(t.shape, dtype=bool)
    if mask is not None:
        m = np.broadcast_to(mask, t.shape)
        if m.dtype == np.bool_:
            visible &= m
        else:
            visible &= m != -np.inf
            t = t + np.where(visible, np.abs(m.astype(np.float64)), 0.0)
    visible &= ref.causal_keep(Lq, Lk, causal, kv_lengths)
    sigma = np.where(visible, t, 0.0).max(axis=-1)  # (B, Hq, Lq)
    term = 1 + sigma / 8
    return float(np.abs(v).max()) * term[..., None], term, term[..., None]


def alibi(Hq, Lk, lowest=-300.0):
    """ALiBi-style additive bias (Hq, 1, Lk): -slope_h (Lk - 1 - j), the steepest head reaching
    `lowest` at key 0. Row-independent (softmax does not see a per-row shift), so under a causal
    mask an early query's visible scores all sit far below 0: its row max is about -300."""
    slopes = -lowest / (Lk - 1) * 2.0 ** -np.arange(Hq)
    return -slopes[:, None, None] * (Lk - 1 - np.arange(Lk))[None, None, :]


@pytest.mark.parametrize("path", ["plain", "tiled", "split-k"])
def test_attention_bound_with_alibi_bias(backend, simd, dtype, path):
    """Out, lse and weights within 64 eps (M (1 + sigma / 8) + |ref|) with an ALiBi-style bias down to
    -300 (where the O(1)-score bound 64 eps (1 + |ref|) is exceeded: sigma is about 300)."""
    rng = np.random.default_rng(21)
    B, Hq, Hkv, L, D = 1, 4, 2, 320, 64
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in ((B, Hq, L, D), (B, Hkv, L, D), (B, Hkv, L, D)))
    mask = alibi(Hq, L).astype(dtype)
    kvl = np.array([300])
    cpu_attention.set_path(path)
    try:
        for causal, kv_lengths in ((True, None), (False, None), (True, kvl)):
            mode = "bottom_right" if causal else None
            got = qkv.attention(q, k, v, causal=causal, mask=mask, kv_lengths=kv_lengths, return_lse=True,
                                return_weights=True)
            fast = qkv.attention(q, k, v, causal=causal, mask=mask, kv_lengths=kv_lengths)
            want = ref.attention(q, k, v, 1 / 8, causal=mode, mask=mask, kv_lengths=kv_lengths, return_lse=True,
                                 return_weights=True)
            bounds = attention_bound(q, k, v, 1 / 8, mask=mask, causal=mode, kv_lengths=kv_lengths)
            assert bounds[1].max() > 1 + 250 / 8  # the scores really are large
            for name, g, w, s in zip(("out", "lse", "weights"), got, want, bounds):
                assert_close(g, w, k=64, scale=s, err_msg=f"{name} causal={causal} kv_lengths={kv_lengths}")
            assert_close(fast, want[0], k=64, scale=bounds[0], err_msg="out without lse/weights")
    finally:
        cpu_attention.set_path("auto")


def test_attention_L16384_logits_50():
    """fp32, L = 16384, scores up to about +-50: sampled query rows vs a float64 oracle."""
    rng = np.random.default_rng(0)
    L, D = 16384, 64
    q = rng.standard_normal((1, 1, L, D)).astype(np.float32)
    k = rng.standard_normal((1, 1, L, D)).astype(np.float32)
    v = rng.standard_normal((1, 1, L, D)).astype(np.float32)
    out, lse = qkv.attention(q, k, v, scale=1.0, causal=True, return_lse=True)
    rows = np.concatenate([rng.choice(L, 48, replace=False), [0, 1, L - 1]])
    s = (q[0, 0, rows].astype(np.float64) @ k[0, 0].T.astype(np.float64))  # (rows, L) scores
    assert np.abs(s).max() > 40  # the logits really are large
    s = np.where(np.arange(L)[None, :] <= rows[:, None], s, -np.inf)
    mx = s.max(axis=1, keepdims=True)
    p = np.exp(s - mx)
    want_lse = (mx + np.log(p.sum(axis=1, keepdims=True)))[:, 0]
    want = (p / p.sum(axis=1, keepdims=True)) @ v[0, 0].astype(np.float64)
    # the output is a convex combination of value rows: errors scale with max |v|
    assert_close(out[0, 0, rows], want.astype(np.float32), k=64, scale=float(np.abs(v).max()))
    assert_close(lse[0, 0, rows], want_lse.astype(np.float32), k=64, scale=1.0)


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=st.lists(finite32, min_size=1, max_size=40), scale=st.sampled_from([1.0, 2.0, 1e30, -1.0]))
def test_softmax_of_finite_inputs_is_never_nan(backend, x, scale):
    a = np.array(x, dtype=np.float32)
    p = qkv.softmax(a, scale=scale)
    assert not np.isnan(p).any()
    with np.errstate(over="ignore"):
        all_neg_inf = bool(np.all(a * np.float32(scale) == -np.inf))
    # every score overflowing to -inf (in float32; the oracle scales in float64) reads as
    # "nothing visible": zeros, as documented
    total = float(p.sum(dtype=np.float64))
    assert abs(total - 1) < 1e-5 or (all_neg_inf and total == 0)
    np.testing.assert_array_equal(np.isnan(p), np.isnan(ref.softmax(a, scale=scale)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_overflow_takes_the_limit(backend, dtype):
    big = np.finfo(dtype).max
    x = np.array([[big, big, 0.0, -big]], dtype)
    got = qkv.softmax(x, scale=4.0)  # two scores overflow to +inf, one to -inf
    np.testing.assert_array_equal(got, np.array([[0.5, 0.5, 0.0, 0.0]], dtype))
    np.testing.assert_array_equal(got, ref.softmax(x, scale=4.0))
