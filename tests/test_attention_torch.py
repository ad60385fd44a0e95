"""qkv.attention against torch.nn.functional.scaled_dot_product_attention (skipped without torch).

torch's is_causal is top-left aligned, so it is compared with causal="top_left" (and with
causal=True where Lq == Lk, where the two alignments coincide)."""

import numpy as np
import pytest
from conftest import assert_close

import qkv

torch = pytest.importorskip("torch")
F = torch.nn.functional


def sdpa(q, k, v, **kw):
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (q, k, v)]
    if "attn_mask" in kw:
        kw["attn_mask"] = torch.from_numpy(np.ascontiguousarray(kw["attn_mask"]))
    return F.scaled_dot_product_attention(*t, **kw).numpy()


def inputs(rng, dtype, B=2, Hq=4, Hkv=4, Lq=70, Lk=70, D=64):
    return (rng.standard_normal((B, Hq, Lq, D)).astype(dtype), rng.standard_normal((B, Hkv, Lk, D)).astype(dtype),
            rng.standard_normal((B, Hkv, Lk, D)).astype(dtype))


@pytest.mark.parametrize("Lq,Lk", [(1, 1), (70, 70), (33, 150), (130, 67), (1, 600)])
def test_plain_and_causal(dtype, Lq, Lk):
    rng = np.random.default_rng(Lq * 1000 + Lk)
    q, k, v = inputs(rng, dtype, Lq=Lq, Lk=Lk)
    assert_close(qkv.attention(q, k, v), sdpa(q, k, v), k=64)
    if Lq <= Lk:  # top-left causal with Lq > Lk leaves no row empty; torch agrees either way
        assert_close(qkv.attention(q, k, v, causal="top_left"), sdpa(q, k, v, is_causal=True), k=64)
    if Lq == Lk:
        assert_close(qkv.attention(q, k, v, causal=True), sdpa(q, k, v, is_causal=True), k=64)


def test_masks_and_scale(dtype):
    rng = np.random.default_rng(1)
    q, k, v = inputs(rng, dtype, Lq=40, Lk=90)
    mask = rng.random((2, 1, 40, 90)) > 0.3
    mask[..., 0] = True  # every row sees a key (torch's convention for empty rows differs)
    assert_close(qkv.attention(q, k, v, mask=mask, scale=0.3), sdpa(q, k, v, attn_mask=mask, scale=0.3), k=64)
    add = rng.standard_normal((40, 90)).astype(dtype)
    assert_close(qkv.attention(q, k, v, mask=add), sdpa(q, k, v, attn_mask=add), k=64)


def test_gqa_and_strided(dtype):
    rng = np.random.default_rng(2)
    q, k, v = inputs(rng, dtype, Hq=8, Hkv=2, Lq=100, Lk=100)
    want = sdpa(q, np.repeat(k, 4, axis=1), np.repeat(v, 4, axis=1), is_causal=True)
    assert_close(qkv.attention(q, k, v, causal=True), want, k=64)
    qt = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # (B, L, H, D) storage
    assert_close(qkv.attention(qt, k, v, causal=True), want, k=64)


def test_large_float32_against_torch():
    rng = np.random.default_rng(3)
    q, k, v = inputs(rng, np.float32, B=1, Hq=3, Hkv=3, Lq=700, Lk=700, D=64)
    for causal in (False, True):
        got = qkv.attention(q, k, v, causal=causal)
        assert_close(got, sdpa(q, k, v, is_causal=causal), k=64)
