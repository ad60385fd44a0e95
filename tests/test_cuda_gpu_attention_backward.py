"""qkv.attention_backward on the cuda backend on a real GPU (CUDA-core kernels attn_bwd_dq and
attn_bwd_dkdv) against the NumPy oracle, at sizes the CPU harness cannot reach, and the same bits
on a second run. The same kernels run on the CPU harness at small sizes (test_cuda_sim.py).
Marked ``gpu``: skipped when CuPy or a device is missing."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_sim"))
from cases import DTYPES, _dt, check, rand  # noqa: E402

import qkv  # noqa: E402
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
