"""qkv.attention_backward on the cuda backend on a real GPU against the NumPy oracle, at sizes the
CPU harness cannot reach, and the same bits on a second run: the tensor-core kernels
(attn_bwd_rowdot, attn_bwd_dq_mma, attn_bwd_dkdv_mma; float16/bfloat16, D = 64 and 128) and the
CUDA-core pair (attn_bwd_dq, attn_bwd_dkdv; float32, other head dims, or forced with
set_path("rows")). The same kernels and the shared body run on the CPU harness at small sizes
(test_cuda_sim.py, test_cuda_sim_backward_mma.py). Marked ``gpu``: skipped when CuPy or a device
is missing."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_sim"))
from cases import DTYPES, _dt, check, rand  # noqa: E402
from cases_backward import attention_backward as attention_backward_body  # noqa: E402

import qkv  # noqa: E402
import qkv._cuda as qc  # noqa: E402
from qkv import _reference as ref  # noqa: E402

pytestmark = pytest.mark.gpu
cp = pytest.importorskip("cupy")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True, "top_left"])
def test_attention_backward_on_gpu(dtype, causal):
    rng = np.random.default_rng(1)
    B, Hq, Hkv, L, D = 2, 8, 2, 300, 64
    q, k, v, dout = (rand(rng, s, dtype) for s in ((B, Hq, L, D), (B, Hkv, L, D), (B, Hkv, L, D), (B, Hq, L, D)))
    kvl = np.array([L, 201])
    mask = rng.random((B, 1, L, L)) < 0.9
    with qkv.use_backend("cuda"):
        dev = [cp.asarray(a) for a in (dout, q, k, v)]
        o, lse = qkv.attention(*dev[1:], causal=causal, mask=cp.asarray(mask), kv_lengths=cp.asarray(kvl),
                               return_lse=True)
        got = qkv.attention_backward(*dev, o, lse, causal=causal, mask=cp.asarray(mask), kv_lengths=cp.asarray(kvl))
        again = qkv.attention_backward(*dev, o, lse, causal=causal, mask=cp.asarray(mask),
                                       kv_lengths=cp.asarray(kvl))
    mode = {False: None, True: "bottom_right"}.get(causal, causal)
    want = ref.attention_backward(dout, q, k, v, cp.asnumpy(o), cp.asnumpy(lse), 1 / 8, causal=mode, mask=mask,
                                  kv_lengths=kvl)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert g.dtype == _dt(dtype)
        check(cp.asnumpy(g), w, dtype, name)
    assert all(cp.asnumpy(a).tobytes() == cp.asnumpy(b).tobytes() for a, b in zip(got, again))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("path", ["auto", "rows"])
def test_attention_backward_kernels_on_gpu(dtype, D, path):
    """Both kernel sets (auto: tensor cores for float16/bfloat16), every causal mode, GQA, a bool mask
    with a fully masked row, kv_lengths, NaN/Inf in hidden keys and values (cases_backward.py)."""
    attention_backward_body(cp.asarray, cp.asnumpy, dtype, big=True, D=D, path=path)


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != "float32"])
def test_attention_backward_mma_additive_mask_and_long_rows_on_gpu(dtype):
    """The tensor-core kernels with an additive mask, Lq != Lk over many tiles (bottom-right rows
    that see nothing), MQA, against the oracle and against the CUDA-core pair on the same inputs."""
    rng = np.random.default_rng(2)
    B, Hq, Hkv, Lq, Lk, D = 1, 4, 1, 1100, 700, 128
    q, k, v = rand(rng, (B, Hq, Lq, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype), rand(rng, (B, Hkv, Lk, D), dtype)
    dout = rand(rng, (B, Hq, Lq, D), dtype)
    amask = np.where(rng.random((1, Hq, 1, Lk)) < 0.9, rng.uniform(-2, 2, (1, Hq, 1, Lk)), -np.inf).astype(q.dtype)
    with qkv.use_backend("cuda"):
        dq_, dk_, dv_, dd, dm = (cp.asarray(a) for a in (q, k, v, dout, amask))
        assert qc._attention_backward_kernels(dq_, dk_, dv_, dd) == "mma"
        o, lse = qkv.attention(dq_, dk_, dv_, causal=True, mask=dm, return_lse=True)
        got = qkv.attention_backward(dd, dq_, dk_, dv_, o, lse, causal=True, mask=dm)
        qc.set_path("rows")
        try:
            rows = qkv.attention_backward(dd, dq_, dk_, dv_, o, lse, causal=True, mask=dm)
        finally:
            qc.set_path("auto")
    want = ref.attention_backward(dout, q, k, v, cp.asnumpy(o), cp.asnumpy(lse), 1 / np.sqrt(D),
                                  causal="bottom_right", mask=amask)
    for name, g, r, w in zip(("dq", "dk", "dv"), got, rows, want):
        check(cp.asnumpy(g), w, dtype, f"{name} tensor cores")
        check(cp.asnumpy(r), w, dtype, f"{name} CUDA cores")
    assert not cp.asnumpy(got[0][:, :, : Lq - Lk]).astype(np.float32).any()  # rows that see no key
