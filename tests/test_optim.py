"""qkv.optim: AdamW (fused C kernel against the float64 reference and torch.optim.AdamW), its
state, global-norm clipping and the cosine schedule."""

import math

import numpy as np
import pytest

import qkv
from qkv import _reference
from qkv.optim import AdamW, clip_grad_norm, cosine_lr


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((7, 5)).astype(dtype), "b": rng.standard_normal(5).astype(dtype),
            "emb": rng.standard_normal((300, 129)).astype(dtype)}


def _grads(params, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(p.shape).astype(p.dtype) for k, p in params.items()}


def _run(backend, dtype, steps=5, **kw):
    params = _params(dtype)
    opt = AdamW(params, **kw)
    with qkv.use_backend(backend):
        for t in range(steps):
            opt.step(_grads(params, 100 + t))
    return params, opt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_kernel_matches_reference(dtype):
    got, _ = _run("cpu", dtype, lr=1e-2)
    want, _ = _run("numpy", dtype, lr=1e-2)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=tol, atol=tol)


def test_adamw_reference_is_the_formula():
    """One step from zero moments, written out: decoupled decay on 2-D, none on 1-D."""
    p = {"w": np.full((2, 2), 2.0), "b": np.full(2, 2.0)}
    g = {"w": np.full((2, 2), 0.5), "b": np.full(2, -0.5)}
    opt = AdamW(p, lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.5)
    with qkv.use_backend("numpy"):
        opt.step(g)
    m_hat, v_hat = 0.5, 0.25  # bias-corrected moments after one step are g and g^2
    np.testing.assert_allclose(p["w"], 2.0 * (1 - 0.1 * 0.5) - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8), rtol=1e-12)
    np.testing.assert_allclose(p["b"], 2.0 + 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8), rtol=1e-12)


def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    params = _params(np.float32)
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    topt = torch.optim.AdamW([{"params": [tp["w"], tp["emb"]], "weight_decay": 0.1},
                              {"params": [tp["b"]], "weight_decay": 0.0}], lr=3e-3, betas=(0.9, 0.99), eps=1e-8,
                             foreach=False)
    opt = AdamW(params, lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for t in range(20):
        g = _grads(params, t)
        for k in tp:
            tp[k].grad = torch.from_numpy(g[k].copy())
        topt.step()
        opt.step(g, lr=3e-3)
    for k in params:
        np.testing.assert_allclose(params[k], tp[k].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_adamw_same_bits_for_1_and_2_threads():
    old = qkv.get_num_threads()
    try:
        qkv.set_num_threads(1)
        one, _ = _run("cpu", np.float32)
        qkv.set_num_threads(2)
        two, _ = _run("cpu", np.float32)
    finally:
        qkv.set_num_threads(old)
    for k in one:
        assert np.array_equal(one[k], two[k])


def test_adamw_lr_override_and_decay_groups():
    p = {"w": np.ones((3, 3), np.float32), "b": np.ones(3, np.float32)}
    opt = AdamW(p, lr=1.0, weight_decay=0.5)
    assert opt.decays("w") and not opt.decays("b")
    opt.step({"w": np.zeros((3, 3), np.float32), "b": np.zeros(3, np.float32)}, lr=0.1)
    np.testing.assert_allclose(p["w"], 0.95)  # zero gradient: only the decay, at the overriding lr
    np.testing.assert_allclose(p["b"], 1.0)


def test_adamw_state_dict_resumes_exactly():
    a, opt_a = _run("cpu", np.float32, steps=3)
    b = {k: v.copy() for k, v in a.items()}
    opt_b = AdamW(b)
    opt_b.load_state_dict({k: ({n: x.copy() for n, x in v.items()} if isinstance(v, dict) else v)
                           for k, v in opt_a.state_dict().items()})
    assert opt_b.t == 3
    for t in range(3, 6):
        opt_a.step(_grads(a, 100 + t))
        opt_b.step(_grads(b, 100 + t))
    for k in a:
        assert np.array_equal(a[k], b[k])


def test_adamw_errors():
    p = _params(np.float32)
    with pytest.raises(ValueError, match="lr"):
        AdamW(p, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        AdamW(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        AdamW(p, eps=0)
    with pytest.raises(TypeError, match="named_parameters"):
        AdamW([1, 2])
    with pytest.raises(ValueError, match="C-contiguous"):
        AdamW({"w": np.ones((4, 4), np.float32).T[:, :2]})
    opt = AdamW(p)
    g = _grads(p, 0)
    with pytest.raises(ValueError, match="missing"):
        opt.step({k: v for k, v in g.items() if k != "b"})
    with pytest.raises(ValueError, match=r"grads\['w'\]"):
        opt.step({**g, "w": g["w"].astype(np.float64)})
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict({"step": 1, "m": {**opt.m, "w": np.zeros(3)}, "v": opt.v})
    assert opt.t == 0  # nothing was applied


def test_clip_grad_norm():
    g = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([[4.0]], np.float32)}
    assert clip_grad_norm(g, 10.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(g["a"], [3.0, 0.0])  # under the limit: untouched
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    total = math.sqrt(sum(float((x.astype(np.float64) ** 2).sum()) for x in g.values()))
    assert total == pytest.approx(1.0, rel=1e-5)
    bad = {"a": np.array([np.nan, 1.0])}
    assert math.isnan(clip_grad_norm(bad, 1.0))
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(g, 0)


def test_cosine_lr():
    lrs = [cosine_lr(s, 1.0, 10, 100, 0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.1 + 0.45)  # half way down the cosine
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == lrs[119] == 0.1


def test_reference_adamw_writes_in_place():
    p, g = np.ones(4, np.float32), np.ones(4, np.float32)
    m, v = np.zeros(4, np.float32), np.zeros(4, np.float32)
    _reference.adamw(p, g, m, v, 0.9, 0.99, 1e-8, 0.1 / 0.1, math.sqrt(0.01), 1.0)
    np.testing.assert_allclose(m, 0.1)
    np.testing.assert_allclose(v, 0.01)
    np.testing.assert_allclose(p, 1.0 - 0.1 / (1.0 + 1e-8), rtol=1e-6)  # step_size * m / (sqrt(v) / bc2 + eps)


def test_adamw_cuda_kernel_on_the_cpu_harness():
    """src/qkv/_cuda/optim.cu's adamw, compiled for the CPU (tests/cuda_sim), driven by
    qkv.optim's own launch code, against the float64 reference: float32, float16, bfloat16 params
    with float32 moments; a length off the block size, several steps."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_sim"))
    import simbuild

    if simbuild.missing_tools() is not None:
        pytest.skip(str(simbuild.missing_tools()))
    import qkv._cuda as qc
    from cases import DTYPES, _dt, rand

    from qkv import optim

    rt = simbuild.SimRuntime(simbuild.build())
    saved, qc._rt = qc._rt, rt
    try:
        for name in DTYPES:
            rng = np.random.default_rng(3)
            p = rand(rng, (1000,), name)
            want = p.copy()
            m, v = np.zeros(1000, np.float32), np.zeros(1000, np.float32)
            m_ref, v_ref = m.copy(), v.copy()
            update = optim._cuda_updater(p.dtype)
            for t in range(1, 4):
                g = rand(rng, (1000,), name)
                args = (0.9, 0.99, 1e-8, 1e-2 / (1 - 0.9 ** t), math.sqrt(1 - 0.99 ** t), 1 - 1e-2 * 0.1)
                n = len(rt.launches)
                update(p, g, m, v, *args)
                ctype = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}[name]
                assert [lname for _, lname, *_ in rt.launches[n:]] == [f"adamw<{ctype}>"]
                _reference.adamw(want, g, m_ref, v_ref, *args)
            np.testing.assert_allclose(m, m_ref, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-9)
            ulp = {"float32": 1e-6, "float16": 1e-3, "bfloat16": 8e-3}[name]
            np.testing.assert_allclose(p.astype(np.float64), want.astype(np.float64), rtol=ulp, atol=ulp, err_msg=name)
            assert _dt(name) == p.dtype
    finally:
        qc._rt = saved
