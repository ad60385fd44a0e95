"""qkv.attention against the oracle (qkv._reference.attention): every option of the contract, every
kernel path (plain, tiled, split-K) and SIMD level, float32 and float64, adversarial values."""

import importlib

import numpy as np
import pytest
from conftest import assert_close

import qkv
from qkv import _reference as ref

cpu_attention = importlib.import_module("qkv._cpu.attention")  # the module (qkv._cpu.attention is the function)

PATHS = ["plain", "tiled", "split-k"]  # "auto" picks one of these (test_auto_path_choice)


@pytest.fixture(params=PATHS)
def path(request):
    cpu_attention.set_path(request.param)
    yield request.param
    cpu_attention.set_path("auto")


def oracle(q, k, v, **kw):
    causal = kw.pop("causal", False)
    causal = {False: None, True: "bottom_right"}.get(causal, causal)
    scale = kw.pop("scale", None)
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    mask = kw.pop("mask", None)
    if mask is not None and mask.dtype != np.bool_:
        mask = mask.astype(q.dtype)
    kvl = kw.pop("kv_lengths", None)
    return ref.attention(q, k, v, scale, causal=causal, mask=mask, kv_lengths=kvl, return_lse=True,
                         return_weights=True)


def check(q, k, v, k_tol=64, score_scale=1.0, **kw):
    """Run qkv.attention with lse and weights and compare all three with the oracle."""
    got = qkv.attention(q, k, v, return_lse=True, return_weights=True, **kw)
    want = oracle(q, k, v, **dict(kw))
    names = ("out", "lse", "weights")
    for name, g, w in zip(names, got, want):
        assert g.dtype == q.dtype, name
        assert_close(g, w, k=k_tol, scale=score_scale, err_msg=name)
    o, lse, wts = got
    hidden = want[2] == 0
    empty = np.isneginf(want[1])
    assert np.all(wts[hidden & ~np.isnan(want[2])] == 0), "masked weights must be exactly 0"
    assert np.all(o[empty] == 0) and np.all(np.isneginf(lse[empty])), "empty rows: zeros and lse = -inf"
    plain = qkv.attention(q, k, v, **kw)  # the fast paths run without lse/weights
    assert_close(plain, want[0], k=k_tol, scale=score_scale, err_msg="out without lse/weights")
    return got


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


SHAPES = [  # B, Hq, Hkv, Lq, Lk, D, Dv
    (1, 1, 1, 1, 1, 16, 16),
    (2, 3, 3, 5, 9, 64, 64),
    (1, 4, 2, 70, 70, 64, 64),  # GQA, L not a multiple of the tile
    (2, 4, 1, 33, 150, 80, 80),  # MQA, cross-attention
    (1, 2, 2, 130, 67, 128, 96),  # Lq > Lk, Dv != D
    (1, 1, 1, 17, 300, 256, 256),
    (1, 2, 2, 1, 700, 64, 64),  # decode
    (1, 2, 1, 3, 520, 24, 40),  # awkward head dims
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True, "top_left"])
def test_shapes(shape, causal, dtype, path):
    B, Hq, Hkv, Lq, Lk, D, Dv = shape
    rng = np.random.default_rng(sum(shape))
    q, k, v = randn(rng, (B, Hq, Lq, D), dtype), randn(rng, (B, Hkv, Lk, D), dtype), randn(rng, (B, Hkv, Lk, Dv), dtype)
    check(q, k, v, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
def test_simd_levels(simd, dtype, path, causal):
    rng = np.random.default_rng(5)
    q, k, v = randn(rng, (1, 3, 75, 64), dtype), randn(rng, (1, 3, 90, 64), dtype), randn(rng, (1, 3, 90, 64), dtype)
    mask = rng.random((75, 90)) > 0.2
    check(q, k, v, causal=causal)
    check(q, k, v, causal=causal, mask=mask, kv_lengths=np.array([80]))


MASK_SHAPES = [(40,), (1, 40), (31, 1), (31, 40), (3, 1, 40), (2, 1, 31, 40), (2, 3, 31, 40), (1, 1, 1, 1), ()]


@pytest.mark.parametrize("mask_shape", MASK_SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_mask_broadcast(mask_shape, kind, dtype, path):
    rng = np.random.default_rng(7)
    q, k, v = randn(rng, (2, 3, 31, 32), dtype), randn(rng, (2, 3, 40, 32), dtype), randn(rng, (2, 3, 40, 32), dtype)
    if kind == "bool":
        mask = rng.random(mask_shape) > 0.3
    else:
        mask = rng.standard_normal(mask_shape)
        mask[rng.random(mask_shape) > 0.7] = -np.inf
        mask = np.asarray(mask, dtype=dtype)
    check(q, k, v, mask=mask)
    check(q, k, v, mask=mask, causal="top_left")


def test_kv_lengths(dtype, path):
    rng = np.random.default_rng(8)
    q, k, v = randn(rng, (4, 2, 20, 64), dtype), randn(rng, (4, 2, 90, 64), dtype), randn(rng, (4, 2, 90, 64), dtype)
    kvl = np.array([0, 1, 57, 90])
    k[2, :, 57:] = np.nan  # padding may hold anything
    v[2, :, 57:] = np.inf
    for causal in (False, True, "top_left"):
        o, lse, w = check(q, k, v, kv_lengths=kvl, causal=causal)
        assert np.all(o[0] == 0) and np.all(np.isneginf(lse[0]))
        assert np.isfinite(o[1:]).all()


KV_CACHE_CASES = [  # B, Hq, Hkv, Lq, Lk, kv_lengths
    (3, 2, 2, 5, 90, [90, 37, 64]),    # a few new tokens appended to caches of different lengths
    (3, 4, 2, 1, 600, [600, 1, 333]),  # one-token decode, GQA, two split-K chunks
    (2, 4, 1, 70, 150, [150, 30]),     # MQA, Lq > kv_len in row 1: its first 40 queries see no key
    (2, 2, 2, 20, 20, [20, 0]),        # an empty cache
]


@pytest.mark.parametrize("case", KV_CACHE_CASES, ids=lambda c: "x".join(map(str, c[:5])))
@pytest.mark.parametrize("causal", [True, "top_left"])
def test_kv_lengths_causal_is_per_row(case, causal, simd, dtype, path):
    """kv_lengths with causal: row b is what it would be alone with its kv_lengths[b] keys. Bottom-right
    puts the diagonal at each row's length (query i sees j <= i + kv_lengths[b] - Lq, FlashAttention's
    kv-cache alignment), top-left stays j <= i; queries that see no key give zeros and lse = -inf."""
    B, Hq, Hkv, Lq, Lk, kvl = case
    kvl = np.array(kvl)
    rng = np.random.default_rng(Lq * Lk)
    q, k, v = randn(rng, (B, Hq, Lq, 64), dtype), randn(rng, (B, Hkv, Lk, 64), dtype), randn(rng, (B, Hkv, Lk, 64), dtype)
    o, lse, _ = check(q, k, v, causal=causal, kv_lengths=kvl)
    for b, n in enumerate(kvl):
        if n == 0:
            assert np.all(o[b] == 0) and np.all(np.isneginf(lse[b]))
            continue
        alone = [q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n]]
        want_o, want_lse = qkv.attention(*alone, causal=causal, return_lse=True)
        assert_close(o[b:b + 1], want_o, k=64, err_msg=f"out, row {b}")
        assert_close(lse[b:b + 1], want_lse, k=64, err_msg=f"lse, row {b}")
        ref_o, ref_lse = ref.attention(*alone, 1 / 8, causal={True: "bottom_right"}.get(causal, causal),
                                       return_lse=True)
        assert_close(o[b:b + 1], ref_o, k=64, err_msg=f"out vs the oracle alone, row {b}")
        empty = Lq - n if causal is True and n < Lq else 0  # bottom-right: the first Lq - n queries
        assert np.all(o[b, :, :empty] == 0) and np.all(np.isneginf(lse[b, :, :empty]))
        assert np.isfinite(lse[b, :, empty:]).all()


def test_fully_masked_rows(dtype, path):
    rng = np.random.default_rng(9)
    q, k, v = randn(rng, (1, 2, 40, 16), dtype), randn(rng, (1, 2, 70, 16), dtype), randn(rng, (1, 2, 70, 16), dtype)
    mask = rng.random((40, 70)) > 0.5
    mask[[0, 17, 39]] = False
    o, lse, w = check(q, k, v, mask=mask)
    assert not np.isnan(o).any()
    assert np.all(o[:, :, [0, 17, 39]] == 0) and np.all(np.isneginf(lse[:, :, [0, 17, 39]]))
    add = np.where(mask, 0.0, -np.inf).astype(dtype)
    check(q, k, v, mask=add)
    # top-left causal with more queries than keys: no row is empty; bottom-right: the first Lq - Lk are
    q2 = randn(rng, (1, 1, 9, 16), dtype)
    o2, lse2, _ = check(q2, k[:, :1, :4], v[:, :1, :4], causal=True)
    assert np.all(o2[0, 0, :5] == 0) and np.all(np.isneginf(lse2[0, 0, :5]))


@pytest.mark.parametrize("how", ["bool", "additive", "causal", "kv_lengths"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_in_masked_keys(how, bad, dtype, path):
    rng = np.random.default_rng(10)
    Lq, Lk = 70, 70
    q, k, v = randn(rng, (2, 2, Lq, 32), dtype), randn(rng, (2, 2, Lk, 32), dtype), randn(rng, (2, 2, Lk, 32), dtype)
    kw = {}
    cols = [3, 40, 69]
    if how == "bool":
        mask = np.ones((Lq, Lk), bool)
        mask[:, cols] = False
        kw["mask"] = mask
    elif how == "additive":
        mask = np.zeros((Lq, Lk), dtype)
        mask[:, cols] = -np.inf
        kw["mask"] = mask
    elif how == "causal":
        kw["causal"] = True  # key j is hidden from queries i < j
    else:
        kw["kv_lengths"] = np.array([60, 3])
        cols = [65, 69]
    k[:, :, cols, 5] = bad
    v[:, :, cols, 7] = bad
    o, _, _ = check(q, k, v, **kw)
    if how != "causal":
        assert np.isfinite(o).all()
    else:  # queries before the first bad key (3) never see one
        assert np.isfinite(o[:, :, :3]).all()


def test_nan_in_visible_positions_makes_nan_rows(dtype, path):
    rng = np.random.default_rng(11)
    q, k, v = randn(rng, (1, 2, 40, 16), dtype), randn(rng, (1, 2, 40, 16), dtype), randn(rng, (1, 2, 40, 16), dtype)
    q[0, 0, 5, 3] = np.nan
    v[0, 1, 10, 2] = np.nan
    o, lse, w = check(q, k, v)
    assert np.isnan(o[0, 0, 5]).all() and np.isfinite(o[0, 0, :5]).all()
    assert np.isnan(o[0, 1, :, 2]).all() and np.isfinite(np.delete(o[0, 1], 2, axis=-1)).all()


def test_large_logits(dtype, path):
    rng = np.random.default_rng(12)
    q, k, v = randn(rng, (1, 2, 50, 64), dtype) * 30, randn(rng, (1, 2, 60, 64), dtype), randn(rng, (1, 2, 60, 64), dtype)
    s = np.abs(np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k)).max() / 8
    check(q, k, v, score_scale=s, k_tol=256)
    check(q, k, v, score_scale=s, k_tol=256, causal=True, scale=0.01)


def test_strided_inputs_and_out(dtype, path):
    rng = np.random.default_rng(13)
    qb, kb, vb = randn(rng, (2, 45, 4, 64), dtype), randn(rng, (2, 50, 2, 64), dtype), randn(rng, (2, 50, 2, 32), dtype)
    q, k, v = qb.transpose(0, 2, 1, 3), kb.transpose(0, 2, 1, 3), vb.transpose(0, 2, 1, 3)  # (B, H, L, D) views
    check(q, k, v, causal=True)
    big = randn(rng, (2, 4, 90, 128), dtype)
    # a non-contiguous last axis (copied once), a reversed last axis (copied), a reversed L axis (used as is)
    check(big[:, :, ::2, ::2], randn(rng, (2, 2, 50, 64), dtype)[..., ::-1], v[:, :, ::-1])
    ro = [np.array(a) for a in (q, k, v)]
    for a in ro:
        a.flags.writeable = False
    check(*ro)
    out = np.full((2, 4, 45, 32), 7, dtype)
    res = qkv.attention(q, k, v, out=out)
    assert res is out
    assert_close(out, oracle(q, k, v)[0], k=64)


def test_inputs_unchanged(dtype, path):
    rng = np.random.default_rng(14)
    q, k, v = randn(rng, (1, 2, 30, 32), dtype), randn(rng, (1, 1, 40, 32), dtype), randn(rng, (1, 1, 40, 32), dtype)
    mask = (rng.standard_normal((30, 40)) + 0.0).astype(dtype)
    kvl = np.array([35])
    copies = [a.copy() for a in (q, k, v, mask, kvl)]
    qkv.attention(q, k, v, mask=mask, kv_lengths=kvl, causal=True, return_lse=True, return_weights=True)
    for a, c in zip((q, k, v, mask, kvl), copies):
        np.testing.assert_array_equal(a, c)


def test_threads_give_identical_results(dtype, path):
    rng = np.random.default_rng(15)
    q, k, v = randn(rng, (1, 3, 150, 64), dtype), randn(rng, (1, 3, 600, 64), dtype), randn(rng, (1, 3, 600, 64), dtype)
    q1 = q[:, :, :2]
    results = []
    for n in (1, 2):
        qkv.set_num_threads(n)
        try:
            results.append([qkv.attention(q, k, v, causal=True, return_lse=True),
                            qkv.attention(q1, k, v, return_lse=True)])
        finally:
            qkv.set_num_threads(None)
    for a, b in zip(results[0], results[1]):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_head_dim_limit():
    q = np.zeros((1, 1, 2, 320), np.float32)
    with pytest.raises(ValueError, match="head dims up to 256"):
        qkv.attention(q, q, q)


def test_set_path_rejects_unknown_names():
    with pytest.raises(ValueError, match="set_path"):
        cpu_attention.set_path("fast")


def test_auto_path_choice():
    """auto: split-K for decode (Lq <= 16), tiled for float32 prefill with SIMD, plain otherwise."""
    kp = cpu_attention.kernel_path
    simd = qkv._config.simd_level()
    assert kp((1, 12, 1, 64), (1, 12, 4096, 64), (1, 12, 4096, 64)) == "split-k"
    assert kp((1, 12, 512, 64), (1, 12, 512, 64), (1, 12, 512, 64)) == ("tiled" if simd >= 1 else "plain")
    assert kp((1, 12, 512, 64), (1, 12, 512, 64), (1, 12, 512, 64), dtype=np.float64) == "plain"
    assert kp((1, 12, 512, 64), (1, 12, 512, 64), (1, 12, 512, 64), return_weights=True) == "plain"
    rng = np.random.default_rng(16)
    for Lq in (1, 100):  # auto gives the oracle's answer on both sides of the switch
        q, k, v = randn(rng, (1, 2, Lq, 64), np.float32), randn(rng, (1, 2, 300, 64), np.float32), randn(rng, (1, 2, 300, 64), np.float32)
        check(q, k, v, causal=True)
