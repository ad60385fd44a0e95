"""qkv.nn pieces against the NumPy oracle: the decode path's one-row linear, blocks with and without
work buffers, sampling, device moves and input checks. The golden tests against transformers are
in test_nn_models.py."""

import numpy as np
import pytest

import qkv
from qkv import _reference as ref
from qkv.nn import GPT, BertConfig, Block, Encoder, GPTConfig, count_parameters
from qkv.nn.gpt import sample
from qkv.nn.module import Scratch


def _randomize(model, seed=0, scale=0.2):
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        noise = rng.standard_normal(p.shape).astype(p.dtype) * scale
        p[...] = (1 + noise) if (p.ndim == 1 and name.endswith("weight")) else noise
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["row-major (in, out)", "column-major (W.T of (out, in))"])
@pytest.mark.parametrize("activation", [None, "gelu_tanh", "gelu"])
def test_one_row_linear(dtype, layout, activation):
    """A decode step multiplies one row by each weight (the GEMV path of qkv.linear)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 1, 96)).astype(dtype)
    w_out_in = rng.standard_normal((40, 96)).astype(dtype)
    w = np.ascontiguousarray(w_out_in.T) if layout.startswith("row") else w_out_in.T
    b = rng.standard_normal(40).astype(dtype)
    out = np.full((1, 1, 40), np.nan, dtype)  # garbage in out= must not leak (BLAS beta = 0)
    got = qkv.linear(x, w, b, activation, out=out)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, ref.linear(x, w, b, activation), rtol=tol, atol=tol * 96)


@pytest.mark.parametrize("pre_ln", [True, False])
def test_block_scratch_matches_fresh_arrays(pre_ln):
    rng = np.random.default_rng(2)
    blk = _randomize(Block(32, 4, 64, pre_ln=pre_ln, causal=pre_ln, activation="gelu_tanh" if pre_ln else "gelu"))
    x = rng.standard_normal((2, 7, 32)).astype(np.float32)
    x0 = x.copy()
    fresh = blk(x)
    np.testing.assert_array_equal(x, x0)  # without a scratch the input is untouched
    with qkv.use_backend("numpy"):
        want = blk(x)
    np.testing.assert_allclose(fresh, want, atol=2e-5, rtol=1e-5)
    s = Scratch(np, np.float32)
    resid = x.copy()
    got = blk(resid, scratch=s)
    assert np.shares_memory(got, resid)  # with a scratch the residual stream is updated in place
    np.testing.assert_array_equal(got, fresh)
    again = blk(x.copy(), scratch=s)  # the same buffers serve the next layer / the next call
    np.testing.assert_array_equal(again, fresh)


def test_forward_does_not_modify_ids_or_weights():
    m = _randomize(GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)))
    before = {n: p.copy() for n, p in m.named_parameters()}
    ids = np.array([[1, 2, 3, 4]])
    ids.flags.writeable = False
    m(ids)
    m.generate(ids, 3, top_k=1)
    for n, p in m.named_parameters():
        np.testing.assert_array_equal(p, before[n], err_msg=n)


def test_generate_on_the_numpy_backend_matches_cpu():
    m = _randomize(GPT(GPTConfig(vocab_size=60, block_size=24, n_layer=2, n_head=4, n_embd=32)), scale=0.5)
    ids = np.array([[5, 9, 2], [7, 7, 1]])
    cpu = m.generate(ids, 8, top_k=1)
    with qkv.use_backend("numpy"):
        oracle = m.generate(ids, 8, top_k=1)
    np.testing.assert_array_equal(cpu, oracle)
    assert cpu.shape == (2, 11) and (cpu[:, :3] == ids).all()


def test_sample_top_k_and_top_p_keep_the_right_tokens():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    draws = {int(sample(logits, top_k=2, rng=rng)[0]) for _ in range(200)}
    assert draws == {0, 1}
    draws = {int(sample(logits, top_p=0.7, rng=rng)[0]) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: the smallest set reaching top_p
    draws = [int(sample(logits, temperature=1.0, rng=rng)[0]) for _ in range(4000)]
    freq = np.bincount(draws, minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    assert sample(logits, top_k=1)[0] == 0


def test_generate_argument_errors():
    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=8))
    ids = np.array([[1, 2]])
    for kw, msg in [({"temperature": -1.0}, "temperature must be > 0"), ({"top_k": 0}, "top_k must be >= 1"),
                    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"), ({"top_p": 1.5}, r"top_p must be in \(0, 1\]")]:
        with pytest.raises(ValueError, match=msg):
            m.generate(ids, 2, **kw)
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative int"):
        m.generate(ids, -1)
    with pytest.raises(ValueError, match="ids must be an integer array"):
        m(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="ids is empty"):
        m(np.zeros((1, 0), np.int64))
    assert m.generate(ids, 0).shape == (1, 2)


def test_encoder_input_errors():
    e = Encoder(BertConfig(vocab_size=40, max_position_embeddings=8, n_layer=1, n_head=2, n_embd=8, n_inner=16))
    ids = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(1, 3\)"):
        e(ids, attention_mask=np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"token_type_ids must be an integer array of shape \(1, 3\)"):
        e(ids, token_type_ids=np.zeros((1, 2), np.int64))
    with pytest.raises(ValueError, match="token_type_ids must lie in"):
        e(ids, token_type_ids=np.full((1, 3), 2))
    with pytest.raises(ValueError, match="token ids must lie in"):
        e(np.array([[1, 40]]))
    with pytest.raises(ValueError, match="exceed the 8 learned positions"):
        e(np.ones((1, 9), np.int64))
    with pytest.raises(ValueError, match="embed needs a tokenizer"):
        e.embed(["no tokenizer here"])


def test_device_moves():
    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=8))
    assert m.to("cpu") is m and m.device == "cpu"
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        m.to("tpu")
    if not qkv.backends()["cuda"]["available"]:
        with pytest.raises(qkv.BackendUnavailable):
            m.to("cuda")


def test_config_errors():
    with pytest.raises(ValueError, match=r"n_embd \(10\) must be divisible by n_head \(4\)"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="GPTConfig.n_layer must be a positive int"):
        GPTConfig(n_layer=0)
    with pytest.raises(ValueError, match="BERT config.json is missing or has an unsupported field"):
        BertConfig.from_hf({"hidden_size": 8})
    with pytest.raises(ValueError, match="unsupported field"):
        GPTConfig.from_hf({"vocab_size": 5, "n_layer": 1, "n_head": 1, "n_embd": 4, "activation_function": "swish"})


def test_parameter_breakdown_adds_up():
    r = count_parameters(GPTConfig.gpt2())
    assert r["total"] == r["embeddings"]["total"] + GPTConfig.gpt2().n_layer * r["per_layer"] + r["final_layer_norm"]
    assert r["per_layer"] == r["attention_per_layer"]["total"] + r["mlp_per_layer"] + r["layer_norms_per_layer"]
    assert r["per_head"]["total"] == 4 * 768 * 64
    with pytest.raises(TypeError, match="expects a GPTConfig or BertConfig"):
        count_parameters({"n_layer": 12})
