"""Llama training: value_and_grad (RMSNorm, rotary positions with Llama 3's scaling, grouped-query
attention, SwiGLU; tied and untied LM head) against central finite differences of the float64
forward, against torch's loss and gradients in the committed fixture (llama_train.npz, written by
tests/fixtures/make_llama_fixtures.py), numpy against cpu, AdamW steps, the buffers reused from step
to step, and the errors of GPT's value_and_grad."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_grads_fd
from test_train import (assert_a_second_step_allocates_little, assert_backend_matches_numpy, assert_batch_errors,
                        assert_buffers_reused_and_inputs_unchanged, assert_loss_and_grads_match, backends,
                        cpu_attention_backward_reason)

import qkv
from qkv.nn import Llama
from qkv.nn.config import LlamaConfig
from qkv.optim import AdamW, clip_grad_norm

FIXTURE = Path(__file__).parent / "fixtures" / "llama_train.npz"
LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 2.0,
          "original_max_position_embeddings": 8}


def _tiny(tied, seed=0, dtype=np.float64, **kw):
    """4 query / 2 KV heads of 4, llama3 rope scaling (all three frequency bands at head dim 4 and
    original_max_position_embeddings 8), weights large enough that every path carries signal."""
    cfg = LlamaConfig(**{**dict(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=16,
                                n_inner=24, rope_scaling=LLAMA3, tie_word_embeddings=tied), **kw})
    model = Llama(cfg, dtype=dtype)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        gain = name.endswith(("ln_1.weight", "ln_2.weight")) or name == "ln_f.weight"
        p[...] = 1 + 0.3 * rng.normal(size=p.shape) if gain else rng.normal(0, 0.5, p.shape)
    return model


def _batch(seed=5, V=13, shape=(2, 7)):
    rng = np.random.default_rng(seed)
    ids, targets = rng.integers(0, V, shape), rng.integers(0, V, shape)
    targets[1, 2] = -1
    return ids, targets


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_value_and_grad_by_finite_differences(tied):
    """Central differences of the float64 forward (numpy backend) at a sample of every parameter."""
    model = _tiny(tied)
    ids, targets = _batch()
    with qkv.use_backend("numpy"):
        loss, grads = model.value_and_grad(ids, targets)
        assert loss == pytest.approx(float(qkv.cross_entropy(model(ids), targets)), rel=1e-12)
        assert list(grads) == [n for n, _ in model.named_parameters()]
        assert ("lm_head.weight" in grads) is not tied
        assert_grads_fd(model, ids, targets, grads)


def test_value_and_grad_with_biases_by_finite_differences():
    """Qwen2's q/k/v biases and Llama's attention_bias / mlp_bias, 4 query heads sharing 1 K/V head."""
    model = _tiny(False, seed=1, n_kv_head=1, qkv_bias=True, proj_bias=True, mlp_bias=True, rope_scaling=None,
                  rope_theta=1e6)
    ids, targets = _batch(6)
    with qkv.use_backend("numpy"):
        _, grads = model.value_and_grad(ids, targets)
        assert {"h.0.attn.c_attn.bias", "h.1.attn.c_proj.bias", "h.0.mlp.c_fc.bias"} <= set(grads)
        assert_grads_fd(model, ids, targets, grads)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_backward_ops_write_into_out(backend):
    """rms_norm_backward, swiglu_backward and rope_backward (what the training step calls) write into
    the destinations given, the same values as without them; rope_backward's out=dy rotates in place."""
    rng = np.random.default_rng(0)
    x, dy, w = rng.normal(size=(2, 3, 8)), rng.normal(size=(2, 3, 8)), rng.normal(size=8)
    pos = np.array([0, 5, 9])
    with qkv.use_backend(backend):
        want = qkv.rms_norm_backward(dy, x, w, eps=1e-5)
        dest = (np.empty_like(x), np.empty_like(w))
        got = qkv.rms_norm_backward(dy, x, w, eps=1e-5, out=dest)
        assert got[0] is dest[0] and got[1] is dest[1]
        want_s = qkv.swiglu_backward(dy, x, x[::-1].copy())
        dest_s = (np.empty_like(x), np.empty_like(x))
        got_s = qkv.swiglu_backward(dy, x, x[::-1].copy(), out=dest_s)
        assert got_s[0] is dest_s[0] and got_s[1] is dest_s[1]
        d4 = dy.reshape(2, 3, 2, 4)
        want_r = qkv.rope_backward(d4, pos, theta=100.0, scaling=None)
        inplace = d4.copy()
        assert qkv.rope_backward(inplace, pos, theta=100.0, out=inplace) is inplace
        with pytest.raises(ValueError, match="dx"):
            qkv.rms_norm_backward(dy, x, w, out=(np.empty((2, 3, 7)), None))
        with pytest.raises(ValueError, match="overlaps"):
            qkv.swiglu_backward(dy, x, x, out=(dy, None))
    for a, b in zip(want + want_s + (want_r,), got + got_s + (inplace,)):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def fixture():
    f = np.load(FIXTURE)
    cfg = LlamaConfig(**json.loads(str(f["config"])))
    model = Llama(cfg)
    for name, p in model.named_parameters():
        p[...] = f["param." + name]
    return f, model


@pytest.mark.parametrize("backend", backends())
def test_loss_and_every_gradient_match_torch(fixture, backend):
    """float32 against transformers' LlamaForCausalLM (GQA, llama3 rope scaling, untied head)."""
    f, model = fixture
    assert_loss_and_grads_match(model, f, backend)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_float64_matches_reference_backend(tied, backend):
    assert_backend_matches_numpy(_tiny(tied), np.arange(24).reshape(2, 12) % 13, backend)


@pytest.mark.parametrize("backend", backends())
def test_adamw_steps_lower_the_loss(backend):
    model = _tiny(False, dtype=np.float32)
    opt = AdamW(model.named_parameters(), lr=1e-2)
    ids, targets = _batch(7, shape=(4, 12))
    losses = []
    with qkv.use_backend(backend):
        for _ in range(8):
            loss, grads = model.value_and_grad(ids, targets)
            clip_grad_norm(grads, 1.0)
            opt.step(grads)
            losses.append(loss)
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses


def test_work_buffers_are_reused_and_inputs_unchanged():
    assert_buffers_reused_and_inputs_unchanged(_tiny(True), *_batch())


def test_a_training_step_after_the_first_allocates_no_large_array():
    """value_and_grad + clip_grad_norm + AdamW.step on the cpu backend (GQA, rope, SwiGLU, untied
    head): after a warm-up step the peak of everything NumPy allocates during a step stays under half
    of one (B, T, C) activation, where a step that allocated would reach megabytes."""
    reason = cpu_attention_backward_reason()
    if reason:
        pytest.skip(reason)
    B, T, C = 2, 32, 256
    cfg = LlamaConfig(vocab_size=512, block_size=T, n_layer=2, n_head=8, n_kv_head=2, n_embd=C, n_inner=512,
                      rope_scaling={**LLAMA3, "original_max_position_embeddings": 16}, tie_word_embeddings=False)
    assert_a_second_step_allocates_little(Llama(cfg).init_weights(0), B, T, C)


def test_value_and_grad_errors():
    model = _tiny(True)
    assert_batch_errors(model)
    ok = np.zeros((2, 4), np.int64)
    with pytest.raises(ValueError, match="empty"):
        model.value_and_grad(ok[:, :0], ok[:, :0])
    window = _tiny(True, sliding_window=4)
    with pytest.raises(ValueError, match="attention window of 4"):
        window.value_and_grad(np.zeros((1, 5), np.int64), np.zeros((1, 5), np.int64))


@pytest.mark.gpu
def test_training_on_cuda_follows_the_cpu(fixture):
    """model.to("cuda") trains through the same layers on the CUDA kernels: loss and gradients of the
    fixture's batch against the cpu backend's."""
    cp = pytest.importorskip("cupy")
    f, model = fixture
    with qkv.use_backend("cpu"):
        loss_c, g_c = model.value_and_grad(f["ids"], f["targets"])
        g_c = {k: g.copy() for k, g in g_c.items()}
    gpu = Llama(model.config)
    for (_, p), (_, q) in zip(model.named_parameters(), gpu.named_parameters()):
        q[...] = p
    gpu = gpu.to("cuda")
    loss_g, g_g = gpu.value_and_grad(f["ids"], f["targets"])
    assert loss_g == pytest.approx(loss_c, rel=1e-4)
    for name, g in g_c.items():
        assert isinstance(g_g[name], cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(g_g[name]), g, rtol=1e-3, atol=1e-3 * np.abs(g).max(), err_msg=name)
