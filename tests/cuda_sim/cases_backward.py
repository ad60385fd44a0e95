"""Test bodies for the cuda backend's backward ops, shared by test_cuda_gpu_backward.py (CuPy arrays
on a GPU, larger shapes) and test_cuda_sim_backward.py (NumPy arrays through the CPU harness, small
shapes), so the GPU tests have been run before they ever meet a GPU.

Each body takes ``dev`` (host array -> backend array), ``host`` (backend array -> NumPy), the dtype
name and ``big``; it calls the public qkv ops on the cuda backend and compares with the oracle.
``attention_backward`` (both attention backward kernel sets) is shared the same way by
test_cuda_gpu_attention_backward.py and test_cuda_sim_backward_mma.py.
"""

import numpy as np

import qkv
from qkv import _reference as ref

from cases import _dt, check, rand


def _bits(host, arrays):
    return [None if a is None else host(a).tobytes() for a in arrays]


def layer_norm_backward(dev, host, dtype, big):
    rng = np.random.default_rng(1)
    R, C = (4096, 768) if big else (37, 300)
    x = rand(rng, (R, C), dtype) * np.asarray(2, _dt(dtype)) + np.asarray(5, _dt(dtype))
    w, b, dy = rand(rng, (C,), dtype), rand(rng, (C,), dtype), rand(rng, (R, C), dtype)
    with qkv.use_backend("cuda"):
        y, mean, rstd = qkv.layer_norm(dev(x), dev(w), dev(b), return_stats=True)
        got = qkv.layer_norm_backward(dev(dy), dev(x), dev(w), dev(b), mean=mean, rstd=rstd)
        again = qkv.layer_norm_backward(dev(dy), dev(x), dev(w), dev(b), mean=mean, rstd=rstd)
        recomputed = qkv.layer_norm_backward(dev(dy), dev(x), None, dev(b))
    m, r = host(mean), host(rstd)
    check(host(y), ref.layer_norm(x, w, b), dtype, "y")
    _, rm, rr = ref.layer_norm(x, w, b, return_stats=True)
    check(m, rm, "float32", "mean")
    check(r, rr, "float32", "rstd")
    for name, a, e in zip(("dx", "dweight", "dbias"), got, ref.layer_norm_backward(dy, x, w, b, 1e-5, m, r)):
        check(host(a), e, dtype, name)
    rdx, _, rdb = ref.layer_norm_backward(dy, x, None, b, 1e-5)
    assert recomputed[1] is None
    check(host(recomputed[0]), rdx, dtype, "dx, stats recomputed")
    check(host(recomputed[2]), rdb, dtype, "dbias, stats recomputed")
    assert _bits(host, got) == _bits(host, again)  # no atomics: the same bits every run


def gelu_softmax_backward(dev, host, dtype, big):
    rng = np.random.default_rng(2)
    x = np.concatenate([np.linspace(-12, 12, 4001 if big else 301), [1e4, -1e4, np.inf, -np.inf, np.nan]])
    x = x.astype(_dt(dtype))
    dy = rand(rng, x.shape, dtype)
    with qkv.use_backend("cuda"):
        for approx in ("tanh", "none"):
            check(host(qkv.gelu_backward(dev(dy), dev(x), approx)), ref.gelu_backward(dy, x, approx), dtype, approx)
    s = rand(rng, (2, 3, 65, 1000 if big else 129), dtype, -20, 20)
    mask = rng.random((2, 1, 65, s.shape[-1])) < 0.5
    mask[0, 0, 1] = False
    with qkv.use_backend("cuda"):
        yd = qkv.softmax(dev(s), mask=dev(mask), causal=True, scale=0.5)
        y = host(yd)
        dys = rand(rng, s.shape, dtype)
        dys[np.asarray(y, np.float32) == 0] = np.nan  # never read
        got = host(qkv.softmax_backward(dev(dys), yd, scale=0.5))
    check(got, ref.softmax_backward(dys, y, 0.5), dtype, "softmax_backward")
    assert np.all(np.asarray(got, np.float32)[np.asarray(y, np.float32) == 0] == 0)


def linear_backward(dev, host, dtype, big):
    rng = np.random.default_rng(3)
    M, K, N = (1024, 768, 3072) if big else (29, 24, 300)
    x, w, b = rand(rng, (M, K), dtype), rand(rng, (K, N), dtype), rand(rng, (N,), dtype)
    dy = rand(rng, (M, N), dtype)
    for activation in (None, "gelu_tanh", "gelu", "relu"):
        for weight in (w, np.asfortranarray(w)):
            with qkv.use_backend("cuda"):
                wd = dev(weight)
                y, pre = qkv.linear(dev(x), wd, dev(b), activation, return_preact=True)
                got = qkv.linear_backward(dev(dy), dev(x), wd, dev(b), activation, preact=pre)
                again = qkv.linear_backward(dev(dy), dev(x), wd, dev(b), activation, preact=pre)
            p = host(pre)
            check(host(y), ref.linear(x, w, b, activation), dtype, f"y {activation}")
            want = ref.linear_backward(dy, x, weight, b, activation, None if activation is None else p)
            for name, a, e in zip(("dx", "dweight", "dbias"), got, want):
                check(host(a), e, dtype, f"{name} {activation} F={weight.flags.f_contiguous}")
            assert got[1].flags.f_contiguous == weight.flags.f_contiguous  # the weight's memory order
            assert _bits(host, got[2:]) == _bits(host, again[2:])


def embedding_backward(dev, host, dtype, big):
    rng = np.random.default_rng(4)
    V, C, n = (50257, 768, 8192) if big else (50, 70, 120)
    ids = rng.integers(0, V, size=(4, n // 4))
    ids[0, : n // 8] = 7  # a popular id
    dout = rand(rng, (4, n // 4, C), dtype)
    with qkv.use_backend("cuda"):
        got = qkv.embedding_backward(dev(dout), dev(ids), V)
        again = qkv.embedding_backward(dev(dout), dev(ids), V)
    check(host(got), ref.embedding_backward(dout, ids, V), dtype, "dtable")
    assert _bits(host, [got]) == _bits(host, [again])


def cross_entropy(dev, host, dtype, big):
    rng = np.random.default_rng(5)
    R, V = (256, 50257) if big else (9, 1000)
    x = rand(rng, (R, V), dtype, -8, 8)
    x[1] = np.asarray(rng.uniform(-1e4, 1e4, V), _dt(dtype))
    x[2, ::3] = -np.inf
    x[3] = np.linspace(-30, 30, V).astype(_dt(dtype))
    x[5, 17] = np.nan
    t = rng.integers(1, V, size=R)
    t[5] = t[6] = -1
    with qkv.use_backend("cuda"):
        loss, d = qkv.cross_entropy(dev(x), dev(t), return_grad=True)
        loss2 = qkv.cross_entropy(dev(x), dev(t))
        none_loss, none_d = qkv.cross_entropy(dev(x), dev(np.full(R, -1)), return_grad=True)
    rloss, rd = ref.cross_entropy(x, t, return_grad=True)
    check(host(loss), rloss, "float32", "loss")
    check(host(d), rd, dtype, "dlogits")
    assert host(loss2).tobytes() == host(loss).tobytes()
    assert not np.asarray(host(d)[[5, 6]], np.float32).any()
    assert float(host(none_loss)) == 0 and not np.asarray(host(none_d), np.float32).any()


BODIES = [layer_norm_backward, gelu_softmax_backward, linear_backward, embedding_backward, cross_entropy]


def attention_backward(dev, host, dtype, big, D=64, path="auto"):
    """qkv.attention_backward on the kernels the cuda backend picks under ``path`` ("auto": the
    tensor-core kernels for float16/bfloat16 at D = 64/128, "rows": the CUDA-core pair), over the
    three causal modes with GQA, tails off every tile, a bool mask with a fully masked row and
    kv_lengths, and NaN/Inf in keys and values nobody sees: against the oracle, exactly zero dk/dv
    for hidden keys, zero dq for the empty row, and (big) the same bits on a second run."""
    import qkv._cuda as qc

    rng = np.random.default_rng(6 + D)
    B, Hq, Hkv, Lq, Lk = (2, 8, 2, 300, 333) if big else (2, 2, 1, 37, 70)
    q, k, v = (rand(rng, (B, h, n, D), dtype) for h, n in ((Hq, Lq), (Hkv, Lk), (Hkv, Lk)))
    dout = rand(rng, (B, Hq, Lq, D), dtype)
    kvl = np.array([Lk - 4, Lk // 2])
    k[:, :, Lk - 4:, 1], v[:, :, Lk - 3:, 2] = np.nan, np.inf  # past both kv_lengths
    k[:, :, 5], v[:, :, 5] = np.inf, np.nan                    # hidden from everyone by the mask
    mask = rng.random((B, 1, Lq, Lk)) < 0.8
    mask[..., 5] = False
    mask[1, 0, 3] = False                                      # a fully masked row
    expected_kernels = "mma" if dtype != "float32" and D in qc.kernels.ATTN_MMA_DIMS and path != "rows" else "rows"
    qc.set_path(path)
    try:
        for causal in (False, True, "top_left"):
            mode = {False: None, True: "bottom_right"}.get(causal, causal)
            with qkv.use_backend("cuda"):
                dq_, dk_, dv_, dd = (dev(a) for a in (q, k, v, dout))
                assert qc._attention_backward_kernels(dq_, dk_, dv_, dd) == expected_kernels
                o, lse = qkv.attention(dq_, dk_, dv_, causal=causal, mask=dev(mask), kv_lengths=dev(kvl),
                                       return_lse=True)
                got = qkv.attention_backward(dd, dq_, dk_, dv_, o, lse, causal=causal, mask=dev(mask),
                                             kv_lengths=dev(kvl))
                again = qkv.attention_backward(dd, dq_, dk_, dv_, o, lse, causal=causal, mask=dev(mask),
                                               kv_lengths=dev(kvl)) if big else got
            want = ref.attention_backward(dout, q, k, v, host(o), host(lse), 1 / np.sqrt(D), causal=mode,
                                          mask=mask, kv_lengths=kvl)
            for name, g, w in zip(("dq", "dk", "dv"), got, want):
                assert g.dtype == _dt(dtype) and g.shape == w.shape, name
                check(host(g), w, dtype, f"{name} causal={causal} path={path}")
            dq, dk, dv = (np.asarray(host(a), np.float32) for a in got)
            assert np.isfinite(dq).all() and not dq[1, :, 3].any()
            assert not dk[0, :, Lk - 4:].any() and not dv[0, :, Lk - 4:].any()
            assert not dk[1, :, Lk // 2:].any() and not dv[1, :, Lk // 2:].any()
            assert not dk[:, :, 5].any() and not dv[:, :, 5].any()
            assert _bits(host, got) == _bits(host, again)  # no atomics: the same bits every run
    finally:
        qc.set_path("auto")
