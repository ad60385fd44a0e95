"""The validated-once path of the models' inference forward (qkv._ops.forward_kernels): on the cpu
backend the layers call the kernels without the per-call checks of the public ops. It must give
the same bits as the checked public ops (generated tokens and logits, prefill and decode steps,
GPT, Llama-family layouts, int8 weights, left-padded batches), agree with the numpy reference,
check once per forward pass, and still fail loudly on arrays that are not what the model built."""

from pathlib import Path

import numpy as np
import pytest

import qkv
from qkv import _backend, _ops
from qkv.nn import GPT, Llama

FIX = Path(__file__).parent / "fixtures"
PROMPTS = [[33], [293, 279, 258], [290, 286, 268, 79, 86, 261, 221]]


def load(name, quantize=None):
    model = (GPT if name == "tiny_gpt2" else Llama).from_pretrained(FIX / name)
    return model.quantize(quantize) if quantize else model


def run(model, n=8):
    """Greedy tokens of a single prompt and of a padded batch, and the logits of a prefill and of
    n single-token steps through a KV cache."""
    V = model.config.vocab_size
    ids = np.array([[5, 17, 3, 11, 2, 9]]) % V
    tokens = model.generate(ids, n, top_k=1, eos_token_id=None)
    batch = model.generate([[t % V for t in p] for p in PROMPTS], n, top_k=1, eos_token_id=None)
    cache = model.new_cache(1, ids.shape[1] + n)
    logits = [model(ids, cache=cache)]
    for t in tokens[0, ids.shape[1]:]:
        logits.append(model(np.array([[t]]), cache=cache))
    return tokens, batch, logits


@pytest.mark.parametrize("name, quantize", [("tiny_gpt2", None), ("tiny_gpt2", "int8"), ("tiny_llama", None),
                                            ("tiny_qwen2", None), ("tiny_mistral", None)])
def test_the_fast_path_gives_the_bits_of_the_checked_ops(name, quantize, monkeypatch):
    model = load(name, quantize)
    tokens, batch, logits = run(model)
    monkeypatch.setattr(_ops, "forward_kernels", lambda x: _ops.PUBLIC_OPS)  # every op through qkv.<op>
    ref_tokens, ref_batch, ref_logits = run(model)
    np.testing.assert_array_equal(tokens, ref_tokens)
    assert batch == ref_batch
    assert len(logits) == len(ref_logits)
    for a, b in zip(logits, ref_logits):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama"])
def test_cpu_and_numpy_backends_agree(name):
    model = load(name)
    tokens, batch, logits = run(model)
    with qkv.use_backend("numpy"):
        ref_tokens, ref_batch, ref_logits = run(model)
    np.testing.assert_array_equal(tokens, ref_tokens)
    assert batch == ref_batch
    for a, b in zip(logits, ref_logits):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_a_decode_step_picks_the_backend_once(monkeypatch):
    """One backend selection per forward pass, not one per op (GPT-2 small made ~86 per token)."""
    model = load("tiny_gpt2")
    calls = []
    select = _backend.select

    def counted(op, arrays):
        calls.append(op)
        return select(op, arrays)

    monkeypatch.setattr(_backend, "select", counted)
    model.generate(np.array([[1, 2, 3]]), 5, top_k=1, eos_token_id=None)
    assert calls == ["forward"] * 5  # the prefill and four single-token steps


def test_forward_kernels_picks_by_backend_and_checks_the_dtype():
    x = np.zeros((1, 1, 8), np.float32)
    assert _ops.forward_kernels(x) is not _ops.PUBLIC_OPS
    with qkv.use_backend("numpy"):
        assert _ops.forward_kernels(x) is _ops.PUBLIC_OPS  # the reference runs the checked ops
    with pytest.raises(TypeError, match="forward: x has dtype float16"):
        _ops.forward_kernels(x.astype(np.float16))
    with pytest.raises(TypeError, match="forward: x must be a NumPy or CuPy array"):
        _ops.forward_kernels([[0.0]])


def test_a_weight_the_model_did_not_build_still_fails_loudly():
    model = load("tiny_gpt2")
    fc = model.h[0].mlp.c_fc
    fc.weight = fc.weight.astype(np.float64)  # not the model's dtype: no kernel takes the mix
    with pytest.raises((TypeError, ValueError)):
        model(np.array([[1, 2, 3]]))
    fc.weight = np.zeros((fc.weight.shape[0] + 1, fc.weight.shape[1]), np.float32)  # the wrong shape
    with pytest.raises(ValueError):
        model(np.array([[1, 2, 3]]))


def test_a_quantized_swiglu_mlp_gets_the_error_of_the_checked_op():
    """The quantized kernels have no SwiGLU epilogue: the fast path hands that call to qkv.linear."""
    model = load("tiny_llama", "int8")
    with pytest.raises(ValueError, match="linear: activation must be one of .* got 'swiglu'"):
        model(np.array([[1, 2, 3]]))
