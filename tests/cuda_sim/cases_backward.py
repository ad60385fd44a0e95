"""Test bodies for the cuda backend's backward ops, shared by test_cuda_gpu_backward.py (CuPy arrays
on a GPU, larger shapes) and test_cuda_sim_backward.py (NumPy arrays through the CPU harness, small
shapes), so the GPU tests have been run before they ever meet a GPU.

Each body takes ``dev`` (host array -> backend array), ``host`` (backend array -> NumPy), the dtype
name and ``big``; it calls the public qkv ops on the cuda backend and compares with the oracle.
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
