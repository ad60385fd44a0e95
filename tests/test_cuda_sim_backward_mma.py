"""The tensor-core attention backward (attn_bwd_rowdot, attn_bwd_dq_mma, attn_bwd_dkdv_mma in
attention.cu) executed on the CPU through the fiber harness (tests/cuda_sim: ldmatrix and mma.sync
emulated from the PTX ISA fragment layouts), driven by qkv._cuda's own dispatch, against the
float64 oracle with the float16/bfloat16 tolerances of the forward: every causal mode, GQA/MQA,
D = 64 and 128, tails off the 64-query, 64-key and 32-query tiles, Lq > Lk, bool and additive
masks, kv_lengths, fully masked rows, NaN/Inf in hidden keys and values; the same bits under every
fiber schedule; and a removed barrier or a wrong fragment is caught. The CUDA-core fallback is
checked for the shapes the tensor-core kernels do not take. Shapes are small: harness runs are slow.
Skipped when g++ or the CUDA headers are missing.
"""

import ctypes
import itertools
import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_sim"))
import simbuild  # noqa: E402

import qkv._cuda as qc  # noqa: E402
from qkv import _reference as ref  # noqa: E402

from cases import BF16, _dt, check, rand  # noqa: E402
from harness import pytestmark, sim  # noqa: E402,F401  (the skip and the fiber runtime fixture)

HALF = ["float16"] + (["bfloat16"] if BF16 is not None else [])
MMA = ("attn_bwd_rowdot", "attn_bwd_dq_mma", "attn_bwd_dkdv_mma")
ROWS = ("attn_bwd_dq", "attn_bwd_dkdv")


def backward(rt, dout, q, k, v, scale, kernels=MMA, **kw):
    """Forward (out, lse) then the backend's attention_backward on runtime ``rt``; asserts exactly
    ``kernels`` ran for the backward. Returns (dq, dk, dv), out, lse."""
    o, lse = qc.attention(q, k, v, scale, return_lse=True, **kw)
    n = len(rt.launches)
    got = qc.attention_backward(dout, q, k, v, o, lse, scale, **kw)
    assert tuple(name.split("<")[0] for _, name, *_ in rt.launches[n:]) == kernels
    return got, o, lse


def inputs(seed, dtype, B, Hq, Hkv, Lq, Lk, D):
    rng = np.random.default_rng(seed)
    q, k, v = rand(rng, (B, Hq, Lq, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype)
    return rand(rng, (B, Hq, Lq, D), dtype), q, k, v


SHAPES = [  # B, Hq, Hkv, Lq, Lk, D
    (1, 2, 1, 70, 37, 64),    # MQA, Lq > Lk (bottom-right: the first 33 queries see nothing), 2 query blocks
    (1, 3, 1, 37, 70, 64),    # GQA (3 heads summed per dk/dv block), tails, 2 key tiles
    (1, 2, 1, 33, 65, 128),   # D = 128: 32-query dk/dv tiles (a tail of 1), a 1-key tail tile
]
CASES = [(dt, causal, SHAPES[(i + c) % len(SHAPES)])
         for i, dt in enumerate(HALF) for c, causal in enumerate([None, "bottom_right", "top_left"])]


def _id(x):
    return "x".join(map(str, x)) if isinstance(x, tuple) else str(x)


@pytest.mark.parametrize("dtype,causal,shape", CASES, ids=_id)
def test_attention_backward_mma(sim, dtype, causal, shape):
    dout, q, k, v = inputs(sum(shape), dtype, *shape)
    got, o, lse = backward(sim, dout, q, k, v, 0.2, causal=causal)
    want = ref.attention_backward(dout, q, k, v, o, lse, 0.2, causal=causal)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert g.dtype == q.dtype and g.shape == w.shape, name
        check(g, w, dtype, f"{name} causal={causal}")
    if causal == "bottom_right" and shape[3] > shape[4]:  # queries that see no key: exactly zero dq
        assert not np.asarray(got[0][:, :, : shape[3] - shape[4]], np.float32).any()


@pytest.mark.parametrize("dtype", HALF[-1:])
def test_attention_backward_mma_masks_kv_lengths_and_nan_keys(sim, dtype):
    """Bool and additive masks, kv_lengths (one row skips the second key tile, one key block sees
    nobody), each causal mode, GQA, a fully masked row, NaN/Inf in keys and values nobody may see
    (in dq's K tiles too, where the tensor cores would turn 0 * Inf into NaN): exactly zero dk/dv
    there, zero dq for the empty row, finite dq everywhere. bfloat16 (float16 when ml_dtypes is
    missing); the GPU test's body below covers float16 with a bool mask, kv_lengths and NaN keys."""
    rng = np.random.default_rng(12)
    B, Hq, Hkv, Lq, Lk, D = 2, 2, 1, 21, 70, 64
    dout, q, k, v = inputs(12, dtype, B, Hq, Hkv, Lq, Lk, D)
    k[:, :, 66:, 3], v[:, :, 67:, 5] = np.nan, np.inf  # beyond kv_lengths
    k[:, :, 7], v[:, :, 7] = np.inf, np.nan            # hidden by the mask from everyone
    kvl = np.array([66, 29])
    bmask = rng.random((B, 1, Lq, Lk)) < 0.7
    bmask[..., 7] = False
    bmask[0, 0, 2] = False                             # a fully masked row
    amask = np.where(bmask, rng.uniform(-3, 3, (B, 1, Lq, Lk)), -np.inf).astype(_dt(dtype))
    for mask, causal in [(amask, None), (bmask, "bottom_right"), (amask, "top_left")]:
        (dq, dk, dv), o, lse = backward(sim, dout, q, k, v, 0.3, causal=causal, mask=mask, kv_lengths=kvl)
        want = ref.attention_backward(dout, q, k, v, o, lse, 0.3, causal=causal, mask=mask, kv_lengths=kvl)
        for name, g, w in zip(("dq", "dk", "dv"), (dq, dk, dv), want):
            check(g, w, dtype, f"{name} causal={causal} mask={mask.dtype}")
        dq, dk, dv = (np.asarray(a, np.float32) for a in (dq, dk, dv))
        assert np.isfinite(dq).all() and not dq[0, :, 2].any()
        assert not dk[0, :, 66:].any() and not dv[0, :, 66:].any()
        assert not dk[1, :, 29:].any() and not dv[1, :, 29:].any()
        assert not dk[:, :, 7].any() and not dv[:, :, 7].any()


def test_attention_backward_mma_body_of_the_gpu_test(sim, monkeypatch):
    """The body test_cuda_gpu_attention_backward.py runs on a device, small, through qkv.* with
    NumPy arrays standing in for CuPy ones (float16; bfloat16 runs the same kernels above)."""
    from cases_backward import attention_backward

    monkeypatch.setattr(qc, "available", lambda: (True, None))
    monkeypatch.setattr(qc, "ARRAY_KIND", "numpy")
    attention_backward(np.asarray, np.asarray, "float16", big=False)


def test_attention_backward_dispatch_falls_back_to_cuda_cores(sim):
    """One place decides (qkv._cuda._attention_backward_kernels): float32, D not 64/128, D != Dv,
    strides that are not multiples of 8 and set_path("rows") run the CUDA-core pair; transposed
    (B, L, H, D) views with 8-element strides stay on the tensor cores."""
    rng = np.random.default_rng(3)
    dout, q, k, v = inputs(3, "float16", 1, 2, 1, 9, 13, 32)
    wide = [np.concatenate([a, -a], -1) for a in (q, k, v, dout)]  # D = 64

    def odd_rows(a):  # the same values, rows 68 elements apart, 4 bytes off a 16-byte boundary
        buf = np.zeros(a.shape[:3] + (a.shape[3] + 4,), a.dtype)
        buf[..., 2:2 + a.shape[3]] = a
        return buf[..., 2:2 + a.shape[3]]

    for qq, kk, vv, dd, dtype in [
        (q, k, v, dout, "float16"),                                          # D = 32
        (*(a.astype(np.float32) for a in wide), "float32"),                  # float32
        (*wide[:2], v, dout, "float16"),                                     # D = 64 != Dv = 32
        (*(odd_rows(a) for a in wide), "float16"),                           # strides not multiples of 8
    ]:
        assert qc._attention_backward_kernels(qq, kk, vv, dd) == "rows"
        got, o, lse = backward(sim, dd, qq, kk, vv, 0.3, ROWS, causal="top_left")
        for g, w in zip(got, ref.attention_backward(dd, qq, kk, vv, o, lse, 0.3, causal="top_left")):
            check(g, w, dtype)
    x = rand(rng, (1, 40, 3 * 2, 64), "float16")  # (B, L, H, D): q, k, v as transposed views
    q, k, v = (x[:, :, i * 2:(i + 1) * 2].transpose(0, 2, 1, 3) for i in range(3))
    dout = rand(rng, q.shape, "float16")
    got, o, lse = backward(sim, dout, q, k, v, 0.125, causal="bottom_right")
    for g, w in zip(got, ref.attention_backward(dout, q, k, v, o, lse, 0.125, causal="bottom_right")):
        check(g, w, "float16", "views")
    try:
        qc.set_path("rows")
        assert qc._attention_backward_kernels(q, k, v, dout) == "rows"
        backward(sim, dout, q, k, v, 0.125, ROWS, causal="bottom_right")
    finally:
        qc.set_path("auto")


# Races need a third tile: the prefetch of tile t + 2 lands in the buffer of tile t. Q_DQ gives
# attn_bwd_dq_mma 3 key tiles per CTA, Q_DKDV gives attn_bwd_dkdv_mma 3 query tiles per CTA.
RACE_INPUTS = {"dq": (1, 1, 1, 64, 192, 64), "dkdv": (1, 1, 1, 192, 64, 64)}
SCHEDULES = list(itertools.product(simbuild.SimRuntime.POLICIES, (False, True)))  # (policy, cp.async eager)


@pytest.mark.parametrize("kernel", ["dq", "dkdv"])
def test_attention_backward_mma_same_bits_every_schedule(sim, kernel):
    """No atomics, a fixed order: the same bits under every fiber schedule and cp.async timing,
    with three tiles per CTA through the double buffer; right against the oracle."""
    dout, q, k, v = inputs(13, "float16", *RACE_INPUTS[kernel])
    results = []
    try:
        for policy, eager in SCHEDULES:
            sim.set_policy(policy, eager)
            got, o, lse = backward(sim, dout, q, k, v, 0.2)
            results.append([a.tobytes() for a in got])
    finally:
        sim.set_policy("round_robin")
    assert all(r == results[0] for r in results[1:])
    for name, g, w in zip(("dq", "dk", "dv"), got, ref.attention_backward(dout, q, k, v, o, lse, 0.2)):
        check(g, w, "float16", name)


# Mutations, each (kernel, anchor, statement at the anchor, its broken form). One mutated build holds
# them all, each behind `qkv_mutation == id` (a global the test sets through ctypes), so the slow
# g++ build runs once.
MUTATIONS = {
    # the end-of-tile barrier removed: a fast warp's prefetch overwrites a tile others still read
    "dq barrier": ("attn_bwd_dq_mma", "__syncthreads();                          // dq: everyone",
                   "__syncthreads();", ""),
    "dkdv barrier": ("attn_bwd_dkdv_mma", "__syncthreads();                          // dkdv: everyone",
                     "__syncthreads();", ""),
    # the dS^T A fragment of dK += dS^T Q with its second 8 queries taken from the first 8
    "dkdv fragment": ("attn_bwd_dkdv_mma", "qkv::frags_to_a<T>(ad, dp[2 * kb2], dp[2 * kb2 + 1]);",
                      "qkv::frags_to_a<T>(ad, dp[2 * kb2], dp[2 * kb2 + 1]);",
                      "qkv::frags_to_a<T>(ad, dp[2 * kb2], dp[2 * kb2]);"),
}


@pytest.fixture(scope="module")
def mutated(tmp_path_factory):
    """A runtime on a copy of the kernels with every mutation of MUTATIONS compiled in, off."""
    tmp = tmp_path_factory.mktemp("mutated")
    src = tmp / "_cuda"
    shutil.copytree(qc.kernels.HERE, src, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    text = (src / "attention.cu").read_text()
    for i, (kernel, anchor, old, new) in enumerate(MUTATIONS.values(), 1):
        at = text.index(anchor, text.index(f" {kernel}(\n"))
        assert text.startswith(old, at)
        text = text[:at] + f"if (qkv_mutation == {i}) {{ {new} }} else {{ {old} }}" + text[at + len(old):]
    text = text.replace('#include "common.cuh"\n', '#include "common.cuh"\nextern "C" { int qkv_mutation = 0; }\n', 1)
    (src / "attention.cu").write_text(text)
    rt = simbuild.SimRuntime(simbuild.build(str(src), str(tmp / "build")))
    dout, q, k, v = inputs(13, "float16", *RACE_INPUTS["dkdv"])  # every mutation off: right
    saved, qc._rt = qc._rt, rt
    try:
        got, o, lse = backward(rt, dout, q, k, v, 0.2)
    finally:
        qc._rt = saved
    for name, g, w in zip(("dq", "dk", "dv"), got, ref.attention_backward(dout, q, k, v, o, lse, 0.2)):
        check(g, w, "float16", f"{name}, mutations off")
    return rt


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_harness_catches_a_broken_mma_backward(sim, mutated, mutation):
    """A removed barrier is wrong under at least one fiber schedule; a wrong fragment under the first."""
    which = "dq" if mutation.startswith("dq") else "dkdv"
    dout, q, k, v = inputs(13, "float16", *RACE_INPUTS[which])  # the same-bits test's inputs: right there
    switch = ctypes.c_int.in_dll(mutated.lib, "qkv_mutation")
    want = None
    errors = {}
    schedules = SCHEDULES if "barrier" in mutation else SCHEDULES[:1]
    try:
        switch.value = list(MUTATIONS).index(mutation) + 1
        qc._rt = mutated
        for policy, eager in schedules:
            mutated.set_policy(policy, eager)
            bad, o, lse = backward(mutated, dout, q, k, v, 0.2)
            if want is None:
                want = ref.attention_backward(dout, q, k, v, o, lse, 0.2)
            errors[policy, eager] = max(float(np.nan_to_num(np.abs(b.astype(np.float64) - w), nan=1.0).max())
                                        for b, w in zip(bad, want))
            if errors[policy, eager] > 0.05:
                break
    finally:
        qc._rt = sim
        switch.value = 0
        mutated.set_policy("round_robin")
    assert max(errors.values()) > 0.05, f"the broken kernel went unnoticed: max errors {errors}"
