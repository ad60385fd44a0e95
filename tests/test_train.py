"""GPT training: init_weights, value_and_grad (against torch's loss and gradients in the committed
fixture, and against finite differences of the float64 forward), and 10 AdamW steps against
torch's loss trajectory. Fixture: tests/fixtures/make_train_fixture.py."""

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_grads_fd

import qkv
from qkv.nn import GPT, GPTConfig
from qkv.optim import AdamW, clip_grad_norm

FIXTURE = Path(__file__).parent / "fixtures" / "train_gpt.npz"


def cpu_attention_backward_reason():
    """None if qkv.attention_backward runs on the cpu backend, else why not (checked when the
    tests run, so they start running the moment the kernel lands)."""
    q = np.zeros((1, 1, 2, 4), np.float32)
    try:
        with qkv.use_backend("cpu"):
            out, lse = qkv.attention(q, q, q, causal=True, return_lse=True)
            qkv.attention_backward(out, q, q, q, out, lse, causal=True)
    except (ImportError, AttributeError, NotImplementedError, qkv.BackendUnavailable) as exc:
        return f"qkv.attention_backward is not available on the cpu backend yet ({type(exc).__name__}: {exc})"
    return None


def backends():
    """numpy always; cpu when its attention backward exists (a skip with the reason otherwise)."""
    reason = cpu_attention_backward_reason()
    return ["numpy", pytest.param("cpu", marks=pytest.mark.skipif(reason is not None, reason=reason or ""))]


@pytest.fixture(scope="module")
def fixture():
    f = np.load(FIXTURE)
    cfg = json.loads(str(f["config"]))
    adamw = cfg.pop("adamw")
    return f, GPTConfig(**cfg), adamw


def _model(fixture, dtype=np.float32):
    f, cfg, _ = fixture
    model = GPT(cfg, dtype=dtype)
    for name, p in model.named_parameters():
        p[...] = f["param." + name]
    return model


@pytest.mark.parametrize("backend", backends())
def test_loss_and_every_gradient_match_torch(fixture, backend):
    assert_loss_and_grads_match(_model(fixture), fixture[0], backend)


def assert_loss_and_grads_match(model, f, backend):
    """value_and_grad of f's batch on backend against torch's loss and gradients in f (float32, 1e-5)."""
    with qkv.use_backend(backend):
        loss, grads = model.value_and_grad(f["ids"], f["targets"])
    assert loss == pytest.approx(float(f["loss"]), rel=1e-5)
    assert list(grads) == [n for n, _ in model.named_parameters()]
    for name, g in grads.items():
        ref = f["grad." + name]
        assert g.shape == ref.shape and g.dtype == np.float32, name
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=name)


@pytest.mark.parametrize("backend", backends())
def test_ten_adamw_steps_follow_torch(fixture, backend):
    f, _, ad = fixture
    model = _model(fixture)
    opt = AdamW(model.named_parameters(), lr=ad["lr"], betas=tuple(ad["betas"]), eps=ad["eps"],
                weight_decay=ad["weight_decay"])
    losses = []
    with qkv.use_backend(backend):
        for ids, targets in zip(f["steps_ids"], f["steps_targets"]):
            loss, grads = model.value_and_grad(ids, targets)
            opt.step(grads)
            losses.append(loss)
    np.testing.assert_allclose(losses, f["steps_loss"], rtol=1e-4)
    assert losses[-1] < losses[0]


def _tiny(seed=0, dtype=np.float64, **kw):
    cfg = GPTConfig(**{**dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8), **kw})
    model = GPT(cfg, dtype=dtype).init_weights(seed)
    rng = np.random.default_rng(seed + 1)
    for _, p in model.named_parameters():  # larger than the init, so every path carries signal
        p += rng.normal(0, 0.3, p.shape)
    return model


def test_value_and_grad_by_finite_differences():
    """Central differences of the float64 forward (numpy backend) at a sample of every parameter."""
    model = _tiny()
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 13, (2, 7))
    targets = rng.integers(0, 13, (2, 7))
    targets[1, 2] = -1
    with qkv.use_backend("numpy"):
        loss, grads = model.value_and_grad(ids, targets)
        assert loss == pytest.approx(float(qkv.cross_entropy(model(ids), targets)), rel=1e-12)
        assert_grads_fd(model, ids, targets, grads)


@pytest.mark.parametrize("backend", backends())
def test_float64_matches_reference_backend(backend):
    assert_backend_matches_numpy(_tiny(n_layer=1), np.arange(16).reshape(2, 8) % 13, backend)


def assert_backend_matches_numpy(model, ids, backend):
    """float64 loss and gradients on backend against the numpy reference backend's (the reference's
    are copied first: value_and_grad returns buffers that the next call overwrites)."""
    with qkv.use_backend("numpy"):
        want_loss, want = model.value_and_grad(ids, ids[:, ::-1])
        want = {k: g.copy() for k, g in want.items()}
    with qkv.use_backend(backend):
        loss, got = model.value_and_grad(ids, ids[:, ::-1])
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("backend", backends())
def test_tied_head_gradient_with_a_vocabulary_larger_than_the_batch(backend):
    """V > B T: the token rows reach d wte through a (rows seen, C) buffer, not a (V, C) one; the
    same gradients as the float64 reference, repeated ids included."""
    model = _tiny(n_layer=1, vocab_size=40)
    ids = np.array([[3, 7, 3, 39, 0, 7]])
    with qkv.use_backend("numpy"):
        want_loss, want = model.value_and_grad(ids, ids[:, ::-1])
        want = {k: g.copy() for k, g in want.items()}
    with qkv.use_backend(backend):
        loss, got = model.value_and_grad(ids, ids[:, ::-1])
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_all_targets_ignored_gives_zero():
    model = _tiny()
    ids = np.zeros((1, 4), np.int64)
    with qkv.use_backend("numpy"):
        loss, grads = model.value_and_grad(ids, np.full((1, 4), -1))
    assert loss == 0.0
    assert all(not g.any() for g in grads.values())


def test_work_buffers_are_reused_and_inputs_unchanged():
    ids = np.array([[1, 2, 3, 4]])
    targets = np.array([[2, 3, 4, 5]])
    assert_buffers_reused_and_inputs_unchanged(_tiny(), ids, targets)
    assert ids.tolist() == [[1, 2, 3, 4]] and targets.tolist() == [[2, 3, 4, 5]]


def assert_buffers_reused_and_inputs_unchanged(model, ids, targets):
    """Two calls of value_and_grad: the same work buffers, the same loss and gradients, the
    parameters untouched."""
    before = {n: p.copy() for n, p in model.named_parameters()}
    with qkv.use_backend("numpy"):
        l1, g1 = model.value_and_grad(ids, targets)
        g1 = {k: g.copy() for k, g in g1.items()}  # the next call overwrites the gradient buffers
        bufs = {k: id(v) for k, v in model._tape.scratch._bufs.items()}
        l2, g2 = model.value_and_grad(ids, targets)
    assert bufs and {k: id(v) for k, v in model._tape.scratch._bufs.items()} == bufs
    assert l1 == l2 and all(np.array_equal(g1[k], g2[k]) for k in g1)
    assert all(np.array_equal(before[n], p) for n, p in model.named_parameters())


def test_a_training_step_after_the_first_allocates_no_large_array():
    """value_and_grad + clip_grad_norm + AdamW.step on the cpu backend: after a warm-up step, the
    activations, the backward's intermediates, the gradients (the logits' one in place of the
    logits) and the norm live in reused buffers. NumPy reports its data allocations to tracemalloc;
    the peak of everything traced during a step stays under half of one (B, T, C) activation (what
    remains is O(B T) statistics and Python objects), where a step that allocated would reach
    megabytes (the gradients alone are 6.9 MB)."""
    reason = cpu_attention_backward_reason()
    if reason:
        pytest.skip(reason)
    B, T, C = 2, 32, 256
    cfg = GPTConfig(vocab_size=512, block_size=T, n_layer=2, n_head=4, n_embd=C)
    assert_a_second_step_allocates_little(GPT(cfg).init_weights(0), B, T, C)


def assert_a_second_step_allocates_little(model, B, T, C):
    """One warm-up step of value_and_grad + clip_grad_norm + AdamW.step on the cpu backend, then
    a second one under tracemalloc: it learns, and its peak stays under half of one (B, T, C)
    float32 activation."""
    opt = AdamW(model.named_parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    V = model.config.vocab_size
    ids, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))

    def step():
        loss, grads = model.value_and_grad(ids, targets)
        clip_grad_norm(grads, 1.0)
        opt.step(grads)
        return loss

    with qkv.use_backend("cpu"):
        first = step()
        tracemalloc.start()
        try:
            second = step()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert second < first  # it learns
    assert peak < B * T * C * 4 // 2, f"a step allocated {peak} bytes at its peak"


def test_value_and_grad_errors():
    assert_batch_errors(_tiny())


def assert_batch_errors(model):
    """value_and_grad refuses a bad batch with a ValueError that names the problem."""
    T, V = model.config.block_size, model.config.vocab_size
    ok = np.zeros((2, 4), np.int64)
    with pytest.raises(ValueError, match="same shape"):
        model.value_and_grad(ok, ok[:, :3])
    with pytest.raises(ValueError, match="integer"):
        model.value_and_grad(ok.astype(np.float32), ok)
    with pytest.raises(ValueError, match=f"context of {T}"):
        model.value_and_grad(np.zeros((1, T + 1), np.int64), np.zeros((1, T + 1), np.int64))
    with pytest.raises(ValueError, match=rf"ids must lie in \[0, {V}\)"):
        model.value_and_grad(ok + V, ok)
    with pytest.raises(ValueError, match="targets must lie"):
        model.value_and_grad(ok, ok - 2)


def test_init_weights():
    cfg = GPTConfig(vocab_size=500, block_size=64, n_layer=4, n_head=4, n_embd=64)
    model = GPT(cfg).init_weights(seed=3)
    p = dict(model.named_parameters())
    assert p["embeddings.wte"].std() == pytest.approx(0.02, rel=0.05)
    assert p["h.0.attn.c_attn.weight"].std() == pytest.approx(0.02, rel=0.05)
    for name in ("h.1.attn.c_proj.weight", "h.2.mlp.c_proj.weight"):
        assert p[name].std() == pytest.approx(0.02 / np.sqrt(2 * 4), rel=0.05)
    assert not p["h.3.mlp.c_fc.bias"].any() and not p["ln_f.bias"].any()
    assert (p["h.0.ln_1.weight"] == 1).all() and (p["ln_f.weight"] == 1).all()
    again = dict(GPT(cfg).init_weights(seed=3).named_parameters())
    assert all(np.array_equal(p[k], again[k]) for k in p)
    other = dict(GPT(cfg).init_weights(seed=4).named_parameters())
    assert not np.array_equal(p["embeddings.wte"], other["embeddings.wte"])


@pytest.mark.gpu
def test_training_on_cuda_follows_the_cpu(fixture):
    """model.to("cuda") trains with the CUDA kernels: three steps of loss, gradients and AdamW
    against the same steps on the CPU."""
    cp = pytest.importorskip("cupy")
    reason = cpu_attention_backward_reason()
    if reason:
        pytest.skip(reason)
    f, _, ad = fixture
    cpu, gpu = _model(fixture), _model(fixture).to("cuda")
    kw = dict(lr=ad["lr"], betas=tuple(ad["betas"]), eps=ad["eps"], weight_decay=ad["weight_decay"])
    opt_c, opt_g = AdamW(cpu.named_parameters(), **kw), AdamW(gpu.named_parameters(), **kw)
    for ids, targets in list(zip(f["steps_ids"], f["steps_targets"]))[:3]:
        loss_c, g_c = cpu.value_and_grad(ids, targets)
        loss_g, g_g = gpu.value_and_grad(ids, targets)
        assert loss_g == pytest.approx(loss_c, rel=1e-4)
        for name, g in g_c.items():
            assert isinstance(g_g[name], cp.ndarray)
            np.testing.assert_allclose(cp.asnumpy(g_g[name]), g, rtol=1e-3, atol=1e-3 * np.abs(g).max(), err_msg=name)
        opt_c.step(g_c)
        opt_g.step(g_g)
    for (name, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
        np.testing.assert_allclose(cp.asnumpy(q), p, rtol=1e-3, atol=1e-4, err_msg=name)
