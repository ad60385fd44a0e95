"""qkv.attention_backward: the float64 oracle against central finite differences of the float64
forward (so the oracle itself is checked), then the cpu backend against the oracle for the whole
contract (every SIMD level, both kernel paths, float32 and float64) within README's bound, plus
the edges: fully masked rows, NaN/Inf in masked keys, strided and read-only inputs, inputs never
modified, and the same bits for 1 and 2 threads."""

import importlib

import numpy as np
import pytest
from conftest import assert_close, fd_grad
from test_numerics import alibi

import qkv
from qkv import _reference as ref

cpu_attention = importlib.import_module("qkv._cpu.attention")
PATHS = ["plain", "tiled"]  # auto picks tiled for float32 when the head dims fill SIMD vectors


@pytest.fixture(params=PATHS)
def path(request):
    cpu_attention.set_path(request.param)
    yield request.param
    cpu_attention.set_path("auto")


# ---------------------------------------------------------------------------------------------
# helpers


def _mode(causal):
    return {False: None, True: "bottom_right"}.get(causal, causal)


def backward_bound(dout, q, k, v, scale, causal=None, mask=None, kv_lengths=None):
    """README's bound for attention_backward: |x - ref| <= 64 eps (X + |ref|); returns X for (dq, dk, dv).

    X is the backward computed on magnitudes, every P_ij weighted by w_i = 1 + sigma_i / 8 (sigma_i
    as in the forward's bound: a recomputed score carries roundings of that size, and exp turns
    them into relative errors of P):
        dv_j: sum_i w_i P_ij |dO_i|
        G_ij = w_i P_ij (|dO_i| . |v_j| + |dO_i| . |o_i|)      (what dS = P (dP - D) is summed from)
        dq_i: |scale| sum_j G_ij |k_j|,  dk_j: |scale| sum_i G_ij |q_i|
    Non-finite entries count as 0 (they only sit in hidden keys, where P = 0, in these tests).
    """
    f = [np.nan_to_num(np.asarray(a, np.float64), nan=0.0, posinf=0.0, neginf=0.0) for a in (dout, q, k, v)]
    do, q64, k64, v64 = f
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    o, p = ref.attention(q64, k64, v64, scale, causal=causal, mask=mask, kv_lengths=kv_lengths,
                         return_weights=True)
    kr, vr = np.repeat(np.abs(k64), g, axis=1), np.repeat(np.abs(v64), g, axis=1)
    t = abs(scale) * np.einsum("bhqd,bhkd->bhqk", np.abs(q64), kr)
    if mask is not None and mask.dtype != np.bool_:
        t = t + np.abs(np.where(np.isneginf(mask), 0.0, mask))
    sigma = np.where(p > 0, t, 0.0).max(axis=-1, keepdims=True)  # (B, Hq, Lq, 1)
    pw = p * (1 + sigma / 8)
    ado = np.abs(do)
    G = pw * (np.einsum("bhqd,bhkd->bhqk", ado, vr) + (ado * np.abs(o)).sum(-1, keepdims=True))
    xq = abs(scale) * np.einsum("bhqk,bhkd->bhqd", G, kr)
    xk = abs(scale) * np.einsum("bhqk,bhqd->bhkd", G, np.abs(q64)).reshape(B, Hkv, g, Lk, D).sum(2)
    xv = np.einsum("bhqk,bhqd->bhkd", pw, ado).reshape(B, Hkv, g, Lk, v.shape[3]).sum(2)
    return xq, xk, xv


def check(dout, q, k, v, causal=False, mask=None, kv_lengths=None, scale=None):
    """qkv.attention_backward (from qkv.attention's out and lse) against the oracle, within the bound."""
    out, lse = qkv.attention(q, k, v, causal=causal, mask=mask, kv_lengths=kv_lengths, scale=scale,
                             return_lse=True)
    got = qkv.attention_backward(dout, q, k, v, out, lse, causal=causal, mask=mask, kv_lengths=kv_lengths,
                                 scale=scale)
    s = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    m = mask if mask is None or mask.dtype == np.bool_ else mask.astype(q.dtype)
    want = ref.attention_backward(dout, q, k, v, out, lse, s, causal=_mode(causal), mask=m, kv_lengths=kv_lengths)
    bounds = backward_bound(dout, q, k, v, s, causal=_mode(causal), mask=m, kv_lengths=kv_lengths)
    for name, g, w, b in zip(("dq", "dk", "dv"), got, want, bounds):
        assert g.dtype == q.dtype and g.shape == w.shape, name
        assert_close(g, w, k=64, scale=b, err_msg=name)
    return got, want


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def inputs(rng, shape, dtype):
    B, Hq, Hkv, Lq, Lk, D, Dv = shape
    return (randn(rng, (B, Hq, Lq, Dv), dtype), randn(rng, (B, Hq, Lq, D), dtype), randn(rng, (B, Hkv, Lk, D), dtype),
            randn(rng, (B, Hkv, Lk, Dv), dtype))


# ---------------------------------------------------------------------------------------------
# the oracle against finite differences


FD_CASES = {  # name: (shape B, Hq, Hkv, Lq, Lk, D, Dv; forward options)
    "plain": ((2, 2, 2, 4, 5, 3, 3), {}),
    "bottom_right_lq_lt_lk": ((1, 2, 1, 3, 5, 4, 3), {"causal": "bottom_right"}),
    "bottom_right_lq_gt_lk": ((1, 2, 2, 6, 4, 3, 2), {"causal": "bottom_right"}),
    "top_left_gqa": ((2, 4, 2, 5, 4, 3, 3), {"causal": "top_left"}),
    "mqa": ((1, 3, 1, 4, 6, 3, 2), {}),
    "kv_lengths_bottom_right": ((2, 4, 2, 4, 6, 3, 2), {"kv_lengths": np.array([6, 3]), "causal": "bottom_right"}),
    "kv_lengths_top_left": ((2, 2, 1, 4, 6, 3, 2), {"kv_lengths": np.array([2, 5]), "causal": "top_left"}),
    "bool_mask": ((1, 2, 2, 4, 5, 3, 3), {"mask": np.random.default_rng(3).random((1, 1, 4, 5)) > 0.4}),
    "additive_mask": ((1, 2, 2, 4, 5, 3, 3), {"mask": np.random.default_rng(4).standard_normal((2, 1, 5))}),
}


@pytest.mark.parametrize("case", list(FD_CASES))
def test_reference_matches_finite_differences(case):
    """d/d(q, k, v) of sum(dout * attention(q, k, v)) by central differences of the float64 forward."""
    shape, kw = FD_CASES[case]
    rng = np.random.default_rng(len(case))
    dout, q, k, v = inputs(rng, shape, np.float64)
    scale = 0.7
    out, lse = ref.attention(q, k, v, scale, return_lse=True, **kw)
    grads = ref.attention_backward(dout, q, k, v, out, lse, scale, **kw)

    def loss():
        return float((ref.attention(q, k, v, scale, **kw) * dout).sum())

    for name, a, g in zip(("dq", "dk", "dv"), (q, k, v), grads):
        assert np.isfinite(g).all(), name
        np.testing.assert_allclose(g, fd_grad(loss, a), rtol=1e-6, atol=1e-7, err_msg=f"{case} {name}")


def test_reference_empty_rows_and_hidden_keys():
    """The oracle itself: a row with nothing visible gets zero dq; keys nobody sees get zero dk, dv."""
    rng = np.random.default_rng(5)
    dout, q, k, v = inputs(rng, (2, 2, 1, 4, 6, 3, 3), np.float64)
    kvl = np.array([0, 3])
    out, lse = ref.attention(q, k, v, 0.5, kv_lengths=kvl, return_lse=True)
    dq, dk, dv = ref.attention_backward(dout, q, k, v, out, lse, 0.5, kv_lengths=kvl)
    assert np.all(dq[0] == 0) and np.all(dk[0] == 0) and np.all(dv[0] == 0)
    assert np.all(dk[1, :, 3:] == 0) and np.all(dv[1, :, 3:] == 0)


# ---------------------------------------------------------------------------------------------
# the cpu backend against the oracle


SHAPES = [  # B, Hq, Hkv, Lq, Lk, D, Dv
    (1, 1, 1, 1, 1, 16, 16),  # L = 1
    (2, 3, 3, 5, 9, 64, 64),
    (1, 4, 2, 70, 70, 64, 64),  # GQA, L not a multiple of the tile
    (2, 4, 1, 33, 150, 80, 80),  # MQA, cross-attention, D a multiple of 8 only
    (1, 2, 2, 130, 67, 32, 48),  # Lq > Lk, Dv != D
    (1, 2, 1, 3, 520, 24, 40),  # few queries, many keys: several key chunks
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True, "top_left"])
def test_shapes(shape, causal, dtype, simd, path):
    rng = np.random.default_rng(sum(shape))
    check(*inputs(rng, shape, dtype), causal=causal)


@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("mask_shape", [(1, 1, 1, 90), (2, 1, 40, 90), (2, 4, 40, 90), (40, 90)])
def test_masks(kind, mask_shape, dtype, path):
    rng = np.random.default_rng(7)
    dout, q, k, v = inputs(rng, (2, 4, 2, 40, 90, 64, 64), dtype)
    if kind == "bool":
        mask = rng.random(mask_shape) > 0.3
    else:
        mask = rng.standard_normal(mask_shape) * 2
        mask[..., ::7] = -np.inf
    check(dout, q, k, v, mask=mask)
    check(dout, q, k, v, mask=mask, causal=True)


@pytest.mark.parametrize("causal", [False, True, "top_left"])
def test_kv_lengths(causal, dtype, simd, path):
    """Bottom-right puts each row's diagonal at kv_lengths[b] (FlashAttention's alignment)."""
    rng = np.random.default_rng(8)
    for shape, kvl in (((3, 4, 2, 70, 100, 64, 64), [100, 37, 0]), ((2, 2, 1, 5, 300, 32, 32), [300, 129])):
        check(*inputs(rng, shape, dtype), causal=causal, kv_lengths=np.array(kvl))


def test_scale_and_large_logits(dtype, simd, path):
    """Scores up to a few hundred (an ALiBi-style bias down to -300, q and k scaled up): within the bound."""
    rng = np.random.default_rng(9)
    dout, q, k, v = inputs(rng, (1, 4, 2, 200, 200, 64, 64), dtype)
    mask = alibi(4, 200).astype(dtype)
    check(dout, q, k, v, mask=mask, causal=True)
    check(dout, q * 4, k * 4, v, scale=0.3)


def test_fully_masked_rows_give_zeros(dtype, path):
    """A query that sees no key (bool mask row all False, Lq > Lk bottom-right, kv_lengths 0): dq = 0, no NaN."""
    rng = np.random.default_rng(10)
    dout, q, k, v = inputs(rng, (2, 2, 2, 40, 70, 64, 64), dtype)
    mask = rng.random((2, 1, 40, 70)) > 0.5
    mask[:, :, 3] = False
    (dq, dk, dv), _ = check(dout, q, k, v, mask=mask)
    assert np.all(dq[:, :, 3] == 0)
    (dq, dk, dv), _ = check(dout[:, :, :, :], q, k[:, :, :20], v[:, :, :20], causal=True)  # Lq 40 > Lk 20
    assert np.all(dq[:, :, :20] == 0) and np.isfinite(dq).all()
    (dq, dk, dv), _ = check(dout, q, k, v, kv_lengths=np.array([0, 70]))
    assert np.all(dq[0] == 0) and np.all(dk[0] == 0) and np.all(dv[0] == 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_in_masked_keys(bad, dtype, simd, path):
    """NaN/Inf in keys and values nobody may see: exactly zero dk/dv there, finite dq, the rest as the oracle."""
    rng = np.random.default_rng(11)
    dout, q, k, v = inputs(rng, (2, 4, 2, 70, 130, 64, 64), dtype)
    k[:, :, 100:, 5] = bad  # beyond kv_lengths
    v[:, :, 110:, 7] = bad
    k[:, :, 20, :] = bad  # a column the bool mask hides from every query
    v[:, :, 20, 3] = bad
    mask = np.ones((1, 1, 70, 130), dtype=bool)
    mask[..., 20] = False
    kvl = np.array([100, 90])
    for causal in (False, True, "top_left"):
        (dq, dk, dv), _ = check(dout, q, k, v, mask=mask, kv_lengths=kvl, causal=causal)
        assert np.isfinite(dq).all()
        assert np.all(dk[0, :, 100:] == 0) and np.all(dv[0, :, 100:] == 0)
        assert np.all(dk[1, :, 90:] == 0) and np.all(dv[1, :, 90:] == 0)
        assert np.all(dk[:, :, 20] == 0) and np.all(dv[:, :, 20] == 0)


def test_strided_readonly_inputs_unchanged(dtype, path):
    """(B, L, H, D) arrays transposed to (B, H, L, D) (last axis contiguous), read-only, never modified."""
    rng = np.random.default_rng(12)
    B, H, L, D = 2, 4, 75, 64
    q, k, v, dout = (randn(rng, (B, L, H, D), dtype).transpose(0, 2, 1, 3) for _ in range(4))
    out, lse = qkv.attention(q, k, v, causal=True, return_lse=True)
    arrays = [dout, q, k, v, out, lse]
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False
    got = qkv.attention_backward(dout, q, k, v, out, lse, causal=True)
    contiguous = qkv.attention_backward(*(np.ascontiguousarray(a) for a in arrays), causal=True)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)
    for g, c in zip(got, contiguous):
        np.testing.assert_array_equal(g, c)
    check(np.ascontiguousarray(dout), q, k, v, causal=True)


@pytest.mark.parametrize("shape", [(2, 4, 2, 100, 130, 64, 64), (1, 2, 1, 150, 700, 32, 32)])
def test_threads_give_identical_results(shape, dtype, path):
    """Same bits on 1 and 2 threads: work items depend on the shapes only, dq partials are added in
    chunk order (the second shape splits each (batch, kv head) into several key chunks)."""
    rng = np.random.default_rng(13)
    dout, q, k, v = inputs(rng, shape, dtype)
    out, lse = qkv.attention(q, k, v, causal=True, return_lse=True)
    results = []
    try:
        for n in (1, 2):
            qkv.set_num_threads(n)
            results.append(qkv.attention_backward(dout, q, k, v, out, lse, causal=True))
    finally:
        qkv.set_num_threads(None)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_numpy_backend_matches_oracle(dtype):
    rng = np.random.default_rng(14)
    dout, q, k, v = inputs(rng, (1, 2, 1, 9, 13, 8, 8), dtype)
    with qkv.use_backend("numpy"):
        check(dout, q, k, v, causal=True)


def test_argument_errors():
    rng = np.random.default_rng(15)
    dout, q, k, v = inputs(rng, (1, 2, 1, 9, 13, 8, 8), np.float32)
    out, lse = qkv.attention(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="dout must have shape"):
        qkv.attention_backward(dout[:, :, :5], q, k, v, out, lse)
    with pytest.raises(ValueError, match="out must have shape"):
        qkv.attention_backward(dout, q, k, v, out[..., :4], lse)
    with pytest.raises(ValueError, match="lse must be a float array"):
        qkv.attention_backward(dout, q, k, v, out, lse[..., :3])
    with pytest.raises(TypeError, match="dout has dtype"):
        qkv.attention_backward(dout.astype(np.float64), q, k, v, out, lse)
    with pytest.raises(ValueError, match="multiple of k/v heads"):
        qkv.attention_backward(dout, q, np.concatenate([k] * 3, 1), np.concatenate([v] * 3, 1), out, lse)
    with pytest.raises(ValueError, match="kv_lengths must lie"):
        qkv.attention_backward(dout, q, k, v, out, lse, kv_lengths=np.array([14]))
    with pytest.raises(TypeError, match="must be an array"):
        qkv.attention_backward(dout, q, k, v, out, None)


def test_auto_path_choice():
    """auto: tiled for float32 with head dims that fill SIMD vectors (AVX2 or better), plain otherwise."""
    from qkv._cpu import _config, _runtime

    shapes = ((1, 12, 512, 64), (1, 12, 512, 64), (1, 12, 512, 64))
    odd = ((1, 2, 9, 20), (1, 2, 9, 20), (1, 2, 9, 20))
    try:
        _config.set_simd_level("scalar")
        assert cpu_attention.backward_kernel_path(*shapes) == "plain"
        if _runtime.cpu_simd_level() >= 1:
            _config.set_simd_level("avx2")
            assert cpu_attention.backward_kernel_path(*shapes) == "tiled"
            assert cpu_attention.backward_kernel_path(*shapes, dtype=np.float64) == "plain"
            assert cpu_attention.backward_kernel_path(*odd) == "plain"
    finally:
        _config.set_simd_level(None)
