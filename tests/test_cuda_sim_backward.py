"""The CUDA backward kernels (layernorm_bwd, act_bwd, act_bwd_cols, sum_partials, softmax_bwd,
cross_entropy_rows, embedding_bwd) executed on the CPU through the fiber harness (tests/cuda_sim),
driven by qkv._cuda's own Python code, against the NumPy oracle: float32, float16, bfloat16, tails
off the block and chunk sizes, every option, adversarial rows. The row reductions must give the
same bits under every fiber schedule (they have no atomics and a fixed order). Skipped when g++ or
the CUDA headers are missing.
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_sim"))
import simbuild  # noqa: E402

import qkv._cuda as qc  # noqa: E402
from qkv import _reference as ref  # noqa: E402

from cases import DTYPES, _dt, check, rand  # noqa: E402
from harness import pytestmark, ran, sim, under_every_schedule  # noqa: E402,F401  (the skip, the fiber runtime fixture, checks)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_backward(sim, dtype):
    rng = np.random.default_rng(1)
    x = rand(rng, (37, 97), dtype) * np.asarray(3, _dt(dtype)) + np.asarray(20, _dt(dtype))
    w, b = rand(rng, (97,), dtype), rand(rng, (97,), dtype)
    dy = rand(rng, (37, 97), dtype)
    y, mean, rstd = qc.layer_norm(x, w, b, 1e-5, return_stats=True)
    _, rm, rr = ref.layer_norm(x, w, b, 1e-5, return_stats=True)
    check(y, ref.layer_norm(x, w, b, 1e-5), dtype, "y")
    assert mean.dtype == rstd.dtype == np.float32 and mean.shape == (37,)
    check(mean, rm, "float32", "mean")
    check(rstd, rr, "float32", "rstd")
    for weight, bias in ((w, b), (None, b), (w, None), (None, None)):
        for stats in ((mean, rstd), (None, None)):
            n = len(sim.launches)
            got = qc.layer_norm_backward(dy, x, weight, bias, 1e-5, *stats)
            ran(sim, n, "layernorm_bwd", *(["sum_partials"] if weight is not None or bias is not None else []))
            want = ref.layer_norm_backward(dy, x, weight, bias, 1e-5, *stats)
            for name, a, e in zip(("dx", "dweight", "dbias"), got, want):
                assert (a is None) == (e is None)
                if a is not None:
                    assert a.dtype == x.dtype
                    check(a, e, dtype, f"{name} weight={weight is not None} stats={stats[0] is not None}")
    under_every_schedule(sim, lambda: qc.layer_norm_backward(dy, x, w, b, 1e-5, mean, rstd))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_backward(sim, dtype):
    x = np.concatenate([np.linspace(-12, 12, 301), [0.0, 1e4, -1e4, 6e4, -6e4, np.inf, -np.inf, np.nan]])
    x = x.astype(_dt(dtype))
    dy = rand(np.random.default_rng(2), x.shape, dtype)
    for approx in ("tanh", "none"):
        n = len(sim.launches)
        got = qc.gelu_backward(dy, x, approx)
        ran(sim, n, "act_bwd")
        check(got, ref.gelu_backward(dy, x, approx), dtype, approx)
        lim = qc.gelu_backward(np.ones(4, _dt(dtype)), np.array([np.inf, 6e4, -np.inf, -6e4], _dt(dtype)), approx)
        np.testing.assert_array_equal(lim.astype(np.float32), [1, 1, 0, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_backward(sim, dtype):
    rng = np.random.default_rng(3)
    x = rand(rng, (2, 3, 5, 300), dtype, -20, 20)
    mask = rng.random((2, 1, 5, 300)) < 0.5
    mask[0, 0, 1] = False  # a fully masked row
    y = ref.softmax(x, mask=mask, causal="bottom_right", scale=0.7)
    dy = rand(rng, x.shape, dtype)
    dy[np.asarray(y, np.float32) == 0] = np.nan  # never read
    n = len(sim.launches)
    got = qc.softmax_backward(dy, y, 0.7)
    ran(sim, n, "softmax_bwd")
    check(got, ref.softmax_backward(dy, y, 0.7), dtype, "masked")
    assert np.all(np.asarray(got, np.float32)[np.asarray(y, np.float32) == 0] == 0)
    v = ref.softmax(x[0, 0, 0])
    check(qc.softmax_backward(dy[0, 1, 0], v, 1.0), ref.softmax_backward(dy[0, 1, 0], v, 1.0), dtype, "1-D")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "gelu_tanh", "gelu", "relu"])
def test_linear_backward(sim, dtype, activation):
    rng = np.random.default_rng(4)
    x, w, b = rand(rng, (3, 29, 24), dtype), rand(rng, (24, 300), dtype), rand(rng, (300,), dtype)
    for weight in (w, np.asfortranarray(w)):
        for bias in (b, None):
            y, pre = qc.linear(x, weight, bias, activation, return_preact=True)
            ey, epre = ref.linear(x, weight, bias, activation, return_preact=True)
            check(y, ey, dtype, "y")
            check(pre, epre, dtype, "preact")
            dy = rand(rng, y.shape, dtype)
            n = len(sim.launches)
            dx, dw, db = qc.linear_backward(dy, x, weight, bias, activation, None if activation is None else pre)
            if bias is not None:
                ran(sim, n, "act_bwd_cols", "sum_partials")
            elif activation is not None:
                ran(sim, n, "act_bwd")
            rdx, rdw, rdb = ref.linear_backward(dy, x, weight, bias, activation, None if activation is None else pre)
            what = f"{activation} F={weight.flags.f_contiguous} bias={bias is not None}"
            check(dx, rdx, dtype, f"dx {what}")
            check(dw, rdw, dtype, f"dw {what}")
            assert dw.shape == w.shape and dw.flags.f_contiguous == weight.flags.f_contiguous
            assert (db is None) == (bias is None)
            if bias is not None:
                check(db, rdb, dtype, f"db {what}")
    under_every_schedule(sim, lambda: qc.linear_backward(dy, x, w, b, activation, pre)[2:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward(sim, dtype):
    rng = np.random.default_rng(5)
    V, C = 50, 70
    ids = rng.integers(0, V, size=(3, 40))
    ids[0, :10] = 7  # a popular id
    dout = rand(rng, (3, 40, C), dtype)
    n = len(sim.launches)
    got = qc.embedding_backward(dout, ids, V)
    ran(sim, n, "embedding_bwd")
    check(got, ref.embedding_backward(dout, ids, V), dtype, "dtable")
    assert not np.asarray(got, np.float32)[np.bincount(ids.reshape(-1), minlength=V) == 0].any()
    under_every_schedule(sim, lambda: (qc.embedding_backward(dout, ids, V),))
    empty = qc.embedding_backward(dout[:0], ids[:0], 4)
    assert empty.shape == (4, C) and not np.asarray(empty, np.float32).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy(sim, dtype):
    rng = np.random.default_rng(6)
    V = 1000
    x = rand(rng, (9, V), dtype, -8, 8)
    x[1] = np.asarray(rng.uniform(-1e4, 1e4, V), _dt(dtype))   # huge logits
    x[2, ::3] = -np.inf                                         # masked logits
    x[3] = np.linspace(-30, 30, V).astype(_dt(dtype))           # the max grows along the row
    x[4] = -np.inf                                              # no mass at all
    x[5, 17] = np.nan                                           # NaN row, ignored below
    t = rng.integers(0, V, size=9)
    t[2], t[4], t[5], t[6] = 3, 0, -1, -1                       # x[2, 3] = -inf: loss +inf
    for grad in (True, False):
        n = len(sim.launches)
        got = qc.cross_entropy(x, t, -1, return_grad=grad)
        ran(sim, n, "cross_entropy_rows")
        want = ref.cross_entropy(x, t, -1, return_grad=grad)
        loss, rloss = (got[0], want[0]) if grad else (got, want)
        assert np.asarray(loss).shape == () and np.asarray(loss).dtype == np.float32
        assert float(loss) == float(rloss) == np.inf
        if grad:
            check(got[1], want[1], dtype, "dlogits")
            assert not np.asarray(got[1][[5, 6]], np.float32).any()
    keep = [0, 1, 3, 7, 8]  # finite losses
    loss, d = qc.cross_entropy(x[keep], t[keep], -1, return_grad=True)
    rloss, rd = ref.cross_entropy(x[keep], t[keep], -1, return_grad=True)
    check(loss, rloss, "float32", "loss")
    check(d, rd, dtype, "dlogits")
    x[6, 0] = np.nan  # a NaN row that counts: NaN loss, NaN gradient row
    loss, d = qc.cross_entropy(x, t * 0 + 1, -1, return_grad=True)
    assert np.isnan(float(loss)) and np.isnan(np.asarray(d[[5, 6]], np.float32)).all()
    assert np.isfinite(np.asarray(d[[0, 1, 2, 3, 4, 7, 8]], np.float32)).all()
    # every target ignored: loss 0, zero gradients
    loss, d = qc.cross_entropy(x, np.full(9, -100), -100, return_grad=True)
    assert float(loss) == 0 and not np.asarray(d, np.float32).any()
    under_every_schedule(sim, lambda: qc.cross_entropy(x[keep], t[keep], -1, return_grad=True))


def test_public_api_through_the_cuda_backend(sim, monkeypatch):
    """qkv.* -> qkv._ops validation -> the cuda backend -> the kernels, NumPy arrays standing in
    for CuPy ones for the length of the test."""
    import qkv

    monkeypatch.setattr(qc, "available", lambda: (True, None))
    monkeypatch.setattr(qc, "ARRAY_KIND", "numpy")
    rng = np.random.default_rng(7)
    x, w, b = rand(rng, (4, 40), "float32"), rand(rng, (40,), "float32"), rand(rng, (40,), "float32")
    dy = rand(rng, (4, 40), "float32")
    W = rand(rng, (40, 33), "float32")
    n = len(sim.launches)
    with qkv.use_backend("cuda"):
        y, mean, rstd = qkv.layer_norm(x, w, b, return_stats=True)
        ln = qkv.layer_norm_backward(dy, x, w, b, mean=mean, rstd=rstd)
        gb = qkv.gelu_backward(dy, x, "none")
        sb = qkv.softmax_backward(dy, qkv.softmax(x, axis=0), axis=0)
        h, pre = qkv.linear(x, W, b[:33], "gelu_tanh", return_preact=True)
        lb = qkv.linear_backward(dy[:, :33], x, W, b[:33], "gelu_tanh", preact=pre)
        eb = qkv.embedding_backward(dy, np.array([3, 1, 3, 0]), 5)
        ce = qkv.cross_entropy(x, np.array([1, -1, 39, 0]), return_grad=True)
    ran(sim, n, "layernorm_bwd", "act_bwd", "act_bwd_cols", "softmax_bwd", "embedding_bwd", "cross_entropy_rows")
    for a, e in zip(ln, ref.layer_norm_backward(dy, x, w, b, 1e-5, mean, rstd)):
        check(a, e, "float32", "layer_norm_backward")
    check(gb, ref.gelu_backward(dy, x, "none"), "float32", "gelu_backward")
    check(sb, ref.softmax_backward(dy.T, ref.softmax(x.T)).T, "float32", "softmax_backward axis=0")
    for a, e in zip(lb, ref.linear_backward(dy[:, :33], x, W, b[:33], "gelu_tanh", pre)):
        check(a, e, "float32", "linear_backward")
    check(eb, ref.embedding_backward(dy, np.array([3, 1, 3, 0]), 5), "float32", "embedding_backward")
    for a, e in zip(ce, ref.cross_entropy(x, np.array([1, -1, 39, 0]), return_grad=True)):
        check(a, e, "float32", "cross_entropy")


def test_harness_catches_a_removed_barrier(sim, tmp_path):
    """layernorm_bwd with the first barrier of its block reduction removed (warps read the shared
    partial sums before the other warps wrote them): wrong under at least one fiber schedule, while
    the intact kernel is right under all of them."""
    import re
    import shutil

    src = tmp_path / "_cuda"
    shutil.copytree(qc.kernels.HERE, src, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    text = (src / "layernorm.cu").read_text()
    broken_text, n = re.subn(r"(if \(lane == 0\) red\[warp\] = v;\n)\s*__syncthreads\(\);\n", r"\1", text, count=1)
    assert n == 1
    (src / "layernorm.cu").write_text(broken_text)
    broken = simbuild.SimRuntime(simbuild.build(str(src), str(tmp_path / "build")))
    rng = np.random.default_rng(9)
    x, dy, w = rand(rng, (20, 1000), "float32"), rand(rng, (20, 1000), "float32"), rand(rng, (1000,), "float32")
    want = ref.layer_norm_backward(dy, x, w, None, 1e-5)[0]
    errors = []
    try:
        for policy in simbuild.SimRuntime.POLICIES:
            sim.set_policy(policy)
            check(qc.layer_norm_backward(dy, x, w, None, 1e-5)[0], want, "float32", f"intact, {policy}")
            broken.set_policy(policy)
            qc._rt = broken
            errors.append(float(np.abs(qc.layer_norm_backward(dy, x, w, None, 1e-5)[0] - want).max()))
            qc._rt = sim
    finally:
        qc._rt = sim
        sim.set_policy("round_robin")
    assert max(errors) > 1e-2, f"the race went unnoticed: errors {errors}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_bodies_on_the_harness(sim, monkeypatch, dtype):
    """The bodies of test_cuda_gpu_backward.py, small, with NumPy arrays standing in for CuPy ones."""
    from cases_backward import BODIES

    monkeypatch.setattr(qc, "available", lambda: (True, None))
    monkeypatch.setattr(qc, "ARRAY_KIND", "numpy")
    for body in BODIES:
        body(np.asarray, np.asarray, dtype, big=False)
