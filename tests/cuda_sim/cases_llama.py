"""Test bodies for the cuda backend's Llama-family ops (rms_norm, rope, swiglu, linear "swiglu" and
their backward), shared by test_cuda_gpu_llama_ops.py (CuPy arrays on a GPU, model sizes) and
test_cuda_sim_llama_ops.py (NumPy arrays through the CPU harness, small sizes), so the GPU tests
have run before they ever meet a GPU.

Each body takes ``dev`` (host array -> backend array), ``host`` (backend array -> NumPy), the dtype
name and ``big``; it calls the public qkv ops on the cuda backend and compares with the oracle.
"""

import numpy as np

import qkv
from qkv import _reference as ref
from qkv import _rope

from cases import _dt, check, rand

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


def _bits(host, arrays):
    return [None if a is None else host(a).tobytes() for a in arrays]


def rms_norm(dev, host, dtype, big):
    rng = np.random.default_rng(1)
    R, C = (2048, 4096) if big else (37, 300)
    x = rand(rng, (R, C), dtype) * np.asarray(3, _dt(dtype))
    w, dy = rand(rng, (C,), dtype), rand(rng, (R, C), dtype)
    with qkv.use_backend("cuda"):
        y, rstd = qkv.rms_norm(dev(x), dev(w), 1e-5, return_stats=True)
        got = qkv.rms_norm_backward(dev(dy), dev(x), dev(w), rstd, eps=1e-5)
        again = qkv.rms_norm_backward(dev(dy), dev(x), dev(w), rstd, eps=1e-5)
        recomputed = qkv.rms_norm_backward(dev(dy), dev(x), None, eps=1e-5)
        plain = qkv.rms_norm(dev(x), None, 1e-5)
    r = host(rstd)
    assert r.dtype == np.float32 and r.shape == (R,)
    check(host(y), ref.rms_norm(x, w, 1e-5), dtype, "y")
    check(r, ref.rms_norm(x, w, 1e-5, return_stats=True)[1], "float32", "rstd")
    check(host(plain), ref.rms_norm(x, None, 1e-5), dtype, "y without weight")
    for name, a, e in zip(("dx", "dweight"), got, ref.rms_norm_backward(dy, x, w, r, 1e-5)):
        assert a.dtype == x.dtype
        check(host(a), e, dtype, name)
    assert recomputed[1] is None
    check(host(recomputed[0]), ref.rms_norm_backward(dy, x, None, None, 1e-5)[0], dtype, "dx, rstd recomputed")
    assert _bits(host, got) == _bits(host, again)  # no atomics: the same bits every run


def rope(dev, host, dtype, big):
    rng = np.random.default_rng(2)
    B, L, H, D = (2, 512, 32, 128) if big else (2, 5, 3, 64)
    x = rand(rng, (B, L, H, D), dtype)
    pos = rng.integers(0, 10**6, size=(B, L))
    for theta, scaling in ((10000.0, None), (500000.0, LLAMA3)):
        inv = _rope.inv_freq(D, theta, _rope.check_scaling("t", scaling))
        with qkv.use_backend("cuda"):
            y = qkv.rope(dev(x), dev(pos), theta=theta, scaling=scaling)
            d = qkv.rope_backward(dev(x), dev(pos), theta=theta, scaling=scaling)
            shared = qkv.rope(dev(x), dev(pos[0]), theta=theta, scaling=scaling)
        check(host(y), ref.rope(x, pos, inv), dtype, f"rope {scaling}")
        check(host(d), ref.rope(x, pos, inv, inverse=True), dtype, f"rope_backward {scaling}")
        check(host(shared), ref.rope(x, pos[0], inv), dtype, f"rope (L,) positions {scaling}")
    # q rotated in place inside a fused (B, L, 3H, D) projection; k, v untouched
    buf = rand(rng, (B, L, 3 * H, D), dtype)
    inv = _rope.inv_freq(D, 10000.0)
    want = ref.rope(buf[:, :, :H], pos, inv)
    with qkv.use_backend("cuda"):
        b = dev(buf)
        q = b[:, :, :H]
        assert qkv.rope(q, dev(pos), out=q) is q
        after = host(b)
    check(after[:, :, :H], want, dtype, "in place, strided")
    assert after[:, :, H:].tobytes() == np.ascontiguousarray(buf[:, :, H:]).tobytes()
    # one decoding step per row, rows at different positions
    step = rand(rng, (4, 1, H, D), dtype)
    p1 = np.array([[0], [7], [4095], [131071]])
    with qkv.use_backend("cuda"):
        got = qkv.rope(dev(step), dev(p1), theta=500000.0, scaling=LLAMA3)
    check(host(got), ref.rope(step, p1, _rope.inv_freq(D, 500000.0, _rope.check_scaling("t", LLAMA3))), dtype,
          "decode")


def swiglu(dev, host, dtype, big):
    rng = np.random.default_rng(3)
    R, N = (2048, 8192) if big else (7, 300)
    g = rand(rng, (R, N), dtype, -12, 12)
    g[0, :8] = np.array([0, -1.2784645, 30, -30, 90, -90, 1e4, -1e4], dtype=np.float64).astype(_dt(dtype))
    u, dy = rand(rng, (R, N), dtype), rand(rng, (R, N), dtype)
    with qkv.use_backend("cuda"):
        y = qkv.swiglu(dev(g), dev(u))
        dg, du = qkv.swiglu_backward(dev(dy), dev(g), dev(u))
    check(host(y), ref.swiglu(g, u), dtype, "swiglu")
    rdg, rdu = ref.swiglu_backward(dy, g, u)
    check(host(dg), rdg, dtype, "dgate")
    check(host(du), rdu, dtype, "dup")
    M, K, inner = (512, 576, 1536) if big else (29, 24, 40)
    x = rand(rng, (M, K), dtype)
    W = (rand(rng, (K, 2 * inner), dtype).astype(np.float32) / np.sqrt(K)).astype(_dt(dtype))
    b = rand(rng, (2 * inner,), dtype)
    for weight in (W, np.asfortranarray(W)):
        for bias in (b, None):
            with qkv.use_backend("cuda"):
                out, pre = qkv.linear(dev(x), dev(weight), None if bias is None else dev(bias), "swiglu",
                                      return_preact=True)
                plain = qkv.linear(dev(x), dev(weight), None if bias is None else dev(bias), "swiglu")
            want_pre = ref.linear(x, weight, bias)
            check(host(pre), want_pre, dtype, "preact")
            p = host(pre)
            check(host(out), ref.swiglu(p[:, :inner], p[:, inner:]), dtype, "linear swiglu from its preact")
            assert host(plain).tobytes() == host(out).tobytes()


BODIES = [rms_norm, rope, swiglu]
