"""qkv.nn.Llama against transformers, from the fixtures written by tests/fixtures/make_llama_fixtures.py
(tiny_llama: GQA, llama3 rope scaling, untied head, three shards; tiny_qwen2: q/k/v biases, tied
embeddings; tiny_mistral: one K/V head, head_dim apart from hidden / heads), and the loader's,
config's and CLI's handling of Llama-family folders."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import qkv
from qkv.cli import main
from qkv.io.checkpoint import _ShapesOnly, read_checkpoint
from qkv.nn import GPT, Llama, LlamaConfig, count_parameters

FIX = Path(__file__).parent / "fixtures"
NAMES = ["tiny_llama", "tiny_qwen2", "tiny_mistral"]
REF = np.load(FIX / "llama_ref.npz")


@pytest.fixture(scope="module", params=NAMES)
def tiny(request):
    name = request.param
    return Llama.from_pretrained(FIX / name), {k.split(".", 1)[1]: REF[k] for k in REF.files if k.startswith(name)}


def _copy(tmp_path, name="tiny_llama"):
    d = tmp_path / name
    shutil.copytree(FIX / name, d)
    return d


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not _DROP}))
    return d


_DROP = object()


# ---------------------------------------------------------------------------------------------
# correctness against transformers

@pytest.mark.parametrize("backend_name", ["cpu", "numpy"])
def test_logits_match_transformers(tiny, backend_name):
    model, r = tiny
    with qkv.use_backend(backend_name):
        logits = model(r["ids"])
    assert logits.shape == r["logits"].shape and logits.dtype == np.float32
    np.testing.assert_allclose(logits, r["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_float64_logits_match_transformers_closely(name):
    """In float64 only the reference's own float32 rotary frequencies (transformers computes
    inv_freq in float32) separate the two: ~3e-7 on logits of a few units."""
    model = Llama.from_pretrained(FIX / name, dtype=np.float64)
    logits = model(REF[name + ".ids"])
    assert logits.dtype == np.float64
    np.testing.assert_allclose(logits, REF[name + ".logits"], atol=2e-6, rtol=0)


def test_greedy_matches_transformers(tiny):
    model, r = tiny
    assert r["greedy_gap"] > 1e-3  # the reference does not hinge on a near-tie
    out = model.generate(r["ids"][:, :5], max_new_tokens=20, top_k=1, eos_token_id=None)
    np.testing.assert_array_equal(out, r["greedy"])


def test_padded_batch_matches_transformers(tiny):
    """Left-padded prompts of 1, 3 and 7 tokens: padding masked at every step, rotary positions
    counted from each row's first token (transformers' cumsum(attention_mask) - 1)."""
    model, r = tiny
    out = model.generate(r["batch_ids"], 12, top_k=1, eos_token_id=None, attention_mask=r["batch_mask"])
    np.testing.assert_array_equal(out, r["batch_greedy"])
    rows = [row[m.astype(bool)] for row, m in zip(r["batch_ids"], r["batch_mask"])]
    L = r["batch_ids"].shape[1]
    for got, row, want in zip(model.generate(rows, 12, top_k=1, eos_token_id=None), rows, r["batch_greedy"]):
        assert got == row.tolist() + want[L:].tolist()


def test_cached_equals_uncached(tiny):
    model, r = tiny
    ids = r["ids"]
    full = model(ids)
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    steps = [model(ids[:, :4], cache=cache)]
    for t in range(4, ids.shape[1]):
        steps.append(model(ids[:, t:t + 1], cache=cache))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-5, rtol=0)


def test_kv_cache_holds_the_kv_heads_only(tiny):
    model, _ = tiny
    c = model.config
    cache = model.new_cache(2, 10)
    assert cache.k.shape == (c.n_layer, 2, c.n_kv_head, 10, c.head_dim) and c.n_kv_head < c.n_head


def test_eos_from_the_folder_ends_generation(tiny):
    model, r = tiny
    assert model.eos_token_id == 2
    eos = int(r["greedy"][0, 8])
    n = 5 + int(np.flatnonzero(r["greedy"][0, 5:] == eos)[0]) + 1  # through its first appearance
    out = model.generate(r["ids"][:1, :5].tolist(), 20, top_k=1, eos_token_id=eos)
    assert out[0] == r["greedy"][0, :n].tolist()


# ---------------------------------------------------------------------------------------------
# the pieces: heads, parameters, layout options

def test_attention_heads_are_views_that_name_their_kv_head():
    model = Llama.from_pretrained(FIX / "tiny_llama")  # 4 query heads, 2 K/V heads, no biases
    attn = model.h[0].attn
    heads = attn.heads
    assert [h.kv_head for h in heads] == [0, 0, 1, 1]
    W = attn.c_attn.weight
    for h in heads:
        for view in (h.Wq, h.Wk, h.Wv_down, h.Wv_up):
            assert np.shares_memory(view, W) or np.shares_memory(view, attn.c_proj.weight)
    np.testing.assert_array_equal(heads[0].Wk, heads[1].Wk)
    assert not np.array_equal(heads[1].Wk, heads[2].Wk)
    # the heads' contributions add up to the layer's attention output (rotary positions 0..L-1)
    x = np.random.default_rng(0).standard_normal((2, 7, model.config.n_embd)).astype(np.float32)
    total = sum(h(x) for h in heads)
    np.testing.assert_allclose(total, attn(x), atol=2e-5, rtol=0)


def test_heads_of_a_gpt_are_unchanged():
    """Without GQA a head reads its own K/V columns, as before (kv_head == index)."""
    from qkv.nn import GPTConfig

    model = GPT(GPTConfig(n_layer=1, n_head=4, n_embd=32, vocab_size=10, block_size=8)).init_weights()
    attn = model.h[0].attn
    for h in attn.heads:
        assert h.kv_head == h.index
        np.testing.assert_array_equal(h.Wk, attn.c_attn.weight[:, 32 + 8 * h.index:32 + 8 * (h.index + 1)])
        np.testing.assert_array_equal(h.Wv_down, attn.c_attn.weight[:, 64 + 8 * h.index:64 + 8 * (h.index + 1)])


@pytest.mark.parametrize("name", NAMES)
def test_num_parameters_match_the_checkpoint_and_count(name):
    from safetensors.numpy import load_file

    model = Llama.from_pretrained(FIX / name)
    files = sorted((FIX / name).glob("*.safetensors"))
    in_file = sum(t.size for f in files for t in load_file(str(f)).values())
    assert model.num_parameters() == in_file == count_parameters(model.config)["total"]


@pytest.mark.parametrize("preset, total", [("llama3_8b", 8_030_261_248), ("llama3_2_1b", 1_235_814_400),
                                           ("mistral_7b", 7_241_732_096), ("qwen2_5_0_5b", 494_032_768),
                                           ("smollm_135m", 134_515_008)])
def test_published_sizes_on_a_shapes_only_model(preset, total, memory_cap):
    """The published parameter counts (Llama-3-8B: 8.03B), from count_parameters and from a model
    whose parameters are shapes only (allocating nothing)."""
    cfg = getattr(LlamaConfig, preset)()
    assert count_parameters(cfg)["total"] == total
    assert Llama(cfg, xp=_ShapesOnly).num_parameters() == total


def test_old_style_rope_fields_load_the_same(tmp_path):
    """rope_theta + rope_scaling (transformers 4 and the Hub's Llama 3 folders) instead of
    transformers 5's rope_parameters."""
    d = _copy(tmp_path)
    rope = json.loads((d / "config.json").read_text())["rope_parameters"]
    theta = rope.pop("rope_theta")
    _edit_config(d, rope_parameters=_DROP, rope_theta=theta, rope_scaling=rope)
    model = Llama.from_pretrained(d)
    assert model.config.rope_scaling["factor"] == 4.0 and model.config.rope_theta == 10000.0
    np.testing.assert_allclose(model(REF["tiny_llama.ids"]), REF["tiny_llama.logits"], atol=1e-4, rtol=0)
    _edit_config(d, rope_scaling=None)  # the scaling matters: without it the logits differ
    assert np.abs(Llama.from_pretrained(d)(REF["tiny_llama.ids"]) - REF["tiny_llama.logits"]).max() > 1e-3


def test_sharded_and_single_file_hold_the_same(tmp_path):
    from safetensors.numpy import save_file

    d = _copy(tmp_path)
    tensors = read_checkpoint(d)
    assert len(list(d.glob("model-*.safetensors"))) == 3 and "lm_head.weight" in tensors
    for f in d.glob("model*.safetensors*"):
        f.unlink()
    save_file(tensors, str(d / "model.safetensors"))
    a, b = Llama.from_pretrained(FIX / "tiny_llama"), Llama.from_pretrained(d)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(pa, pb)


def _save_bf16(tensors, path):
    """A safetensors file of BF16 tensors written by hand (NumPy has no bfloat16): each float32
    truncated to its top 16 bits."""
    import struct

    meta, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        bits = (np.ascontiguousarray(t, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        meta[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + len(bits)]}
        blobs.append(bits)
        offset += len(bits)
    h = json.dumps(meta).encode()
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_bfloat16_checkpoints_are_widened_exactly(tmp_path):
    """Llama 3, Qwen2.5 and SmolLM ship bfloat16 safetensors, which NumPy cannot hold: they load
    as float32 with the same values (bf16 -> f32 is exact)."""
    from safetensors.numpy import load_file

    d = _copy(tmp_path, "tiny_qwen2")
    _save_bf16(load_file(str(d / "model.safetensors")), d / "model.safetensors")
    model = Llama.from_pretrained(d)
    ref = Llama.from_pretrained(FIX / "tiny_qwen2")
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert p.dtype == np.float32
        np.testing.assert_array_equal(p, (q.view(np.uint32) & 0xFFFF0000).view(np.float32), err_msg=name)
    from qkv.io.checkpoint import read_safetensors

    assert all(t.dtype == np.float32 for t in read_safetensors(d).values())
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-10])
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        Llama.from_pretrained(d)
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        read_safetensors(d / "model.safetensors")


def test_safetensors_reader_matches_safetensors_and_holds_the_weights_once(tmp_path):
    """read_safetensors reads each tensor from the file into its own array: the same values, dtypes
    and shapes as safetensors' load_file for every dtype it reads directly, writeable, each array
    its own read (load_file's arrays view copies out of a whole-file read: the weights twice)."""
    from safetensors.numpy import load_file, save_file

    from qkv.io.checkpoint import read_safetensors

    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": rng.standard_normal(7),
               "c": rng.standard_normal((2, 2, 2)).astype(np.float16), "d": np.arange(6, dtype=np.int64).reshape(2, 3),
               "e": np.arange(4, dtype=np.int32), "f": np.zeros((0, 4), np.float32)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    got, want = read_safetensors(tmp_path), load_file(str(tmp_path / "model.safetensors"))
    assert got.keys() == want.keys()
    for name, t in got.items():
        assert t.dtype == want[name].dtype and t.shape == want[name].shape, name
        np.testing.assert_array_equal(t, want[name], err_msg=name)
        assert t.flags.writeable and (t.base is None or t.base.base is None), name


def test_tied_head_is_the_embedding_and_untied_is_its_own():
    tied, untied = Llama.from_pretrained(FIX / "tiny_qwen2"), Llama.from_pretrained(FIX / "tiny_llama")
    assert tied.lm_head is None and "lm_head.weight" not in dict(tied.named_parameters())
    assert untied.lm_head.weight.shape == (64, 300)


def test_sliding_window_is_refused_beyond_the_window(tmp_path):
    model = Llama.from_pretrained(_edit_config(_copy(tmp_path, "tiny_mistral"), sliding_window=8))
    model(REF["tiny_mistral.ids"][:, :8])
    with pytest.raises(ValueError, match="attention window of 8"):
        model(REF["tiny_mistral.ids"][:, :9])


# ---------------------------------------------------------------------------------------------
# config and loader errors

@pytest.mark.parametrize("kw, match", [
    (dict(n_kv_head=2, n_head=3), "multiple of n_kv_head"),
    (dict(n_kv_head=0), "n_kv_head must be a positive int"),
    (dict(head_dim=7), "head_dim .7. must be even"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps must be a positive finite number"),
    (dict(rope_theta=float("inf")), "rope_theta"),
    (dict(qkv_bias=1), "qkv_bias must be a bool"),
    (dict(sliding_window=0), "sliding_window must be None or a positive int"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_type 'yarn' is not supported"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                        "original_max_position_embeddings": 8192}), "must exceed low_freq_factor"),
    (dict(rope_scaling="llama3"), "rope_scaling must be None or a dict"),
])
def test_config_checks_every_field(kw, match):
    with pytest.raises(ValueError, match=match):
        LlamaConfig(**kw)


@pytest.mark.parametrize("changes, match", [
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"num_key_value_heads": 3}, "multiple of n_kv_head"),
    ({"num_attention_heads": "4"}, "malformed field"),
    ({"intermediate_size": _DROP}, "missing or has an unsupported field: intermediate_size"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}, "'dynamic' is not supported"),
    ({"rope_parameters": [1, 2]}, "rope_parameters must be an object"),
    ({"num_hidden_layers": 3}, "config.json says 3 layers but the checkpoint holds 2"),
    ({"intermediate_size": 50}, "needs"),
    ({"tie_word_embeddings": True}, None),  # loads: the untied lm_head tensor is then unused
    ({"model_type": "gpt2"}, "Llama.from_pretrained reads model_type 'llama', 'qwen2' or 'mistral'"),
])
def test_loader_refuses_a_config_that_does_not_fit(tmp_path, changes, match, memory_cap):
    d = _edit_config(_copy(tmp_path), **changes)
    if match is None:
        Llama.from_pretrained(d)
        return
    with pytest.raises(ValueError, match=match):
        Llama.from_pretrained(d)


def test_qwen2_sliding_window_layers_are_refused(tmp_path):
    d = _edit_config(_copy(tmp_path, "tiny_qwen2"), use_sliding_window=True)
    with pytest.raises(ValueError, match="use_sliding_window"):
        Llama.from_pretrained(d)


def _index(d):
    return json.loads((d / "model.safetensors.index.json").read_text())


def _write_index(d, idx):
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))


def _retensor(d, change):
    """Rewrite the shards with change(tensors) applied (the index follows the tensors' new places)."""
    from safetensors.numpy import load_file, save_file

    idx = _index(d)
    for f in sorted(set(idx["weight_map"].values())):
        t = change(load_file(str(d / f)))
        save_file(t, str(d / f))
        idx["weight_map"] = {**{k: v for k, v in idx["weight_map"].items() if v != f}, **{k: f for k in t}}
    _write_index(d, idx)


@pytest.mark.parametrize("case, match", [
    ("shard missing", "model-00002-of-00003.safetensors is missing"),
    ("shard outside", "must be a .safetensors file name in the model folder"),
    ("index not json", "is not a safetensors index"),
    ("index lists absent", "which does not hold it"),
    ("tensor in two shards", "is in more than one shard"),
    ("k_proj missing", "missing tensor 'layers.1.self_attn.k_proj.weight' .for layer 1 attention"),
    ("k_proj misshaped", r"layers.1.self_attn.\[q\|k\|v\]_proj.weight \(fused\)' has shape \(64, 144\); "
                         r"h.1.attn.c_attn.weight needs \(64, 128\)"),
    ("k_proj in-width", "does not fit beside"),
    ("k_proj int", "dtype int32; expected floating point"),
    ("lm_head missing", "missing tensor 'lm_head.weight'"),
])
def test_loader_errors_name_the_file_or_tensor(tmp_path, case, match, memory_cap):
    d = _copy(tmp_path)
    k = "model.layers.1.self_attn.k_proj.weight"
    if case == "shard missing":
        (d / "model-00002-of-00003.safetensors").unlink()
    elif case == "shard outside":
        idx = _index(d)
        idx["weight_map"]["model.norm.weight"] = "../model-00003-of-00003.safetensors"
        _write_index(d, idx)
    elif case == "index not json":
        (d / "model.safetensors.index.json").write_text("{weight_map")
    elif case == "index lists absent":
        idx = _index(d)
        idx["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00003.safetensors"
        _write_index(d, idx)
    elif case == "tensor in two shards":
        from safetensors.numpy import load_file, save_file

        t = load_file(str(d / "model-00001-of-00003.safetensors"))
        t["model.norm.weight"] = np.ones(64, np.float32)
        save_file(t, str(d / "model-00001-of-00003.safetensors"))
    elif case.startswith("k_proj"):
        def change(t):
            if k in t:
                if case == "k_proj missing":
                    del t[k]
                elif case == "k_proj misshaped":
                    t[k] = np.zeros((48, 64), np.float32)
                elif case == "k_proj in-width":
                    t[k] = np.zeros((32, 60), np.float32)
                else:
                    t[k] = np.zeros((32, 64), np.int32)
            return t
        _retensor(d, change)
    elif case == "lm_head missing":
        _retensor(d, lambda t: {n: v for n, v in t.items() if n != "lm_head.weight"})
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        Llama.from_pretrained(d)


def test_gpt_and_encoder_refuse_a_llama_folder():
    from qkv.nn import Encoder

    with pytest.raises(ValueError, match="holds a Llama-family decoder .model_type 'llama'.; GPT.from_pretrained"):
        GPT.from_pretrained(FIX / "tiny_llama")
    with pytest.raises(ValueError, match="holds a Qwen2 decoder"):
        Encoder.from_pretrained(FIX / "tiny_qwen2")


# ---------------------------------------------------------------------------------------------
# the qkv command

def test_cli_generate_and_params_on_a_llama_folder(capsys):
    folder = str(FIX / "tiny_llama")
    assert main(["generate", "--model", folder, "--prompt", "The cat", "--max-new-tokens", "6", "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    tok = Llama.from_pretrained(folder).tokenizer
    model = Llama.from_pretrained(folder)
    ids = tok.encode("The cat").ids
    want = model.generate([ids], 6, top_k=1)[0]
    assert out.strip() == tok.decode(want).strip()
    assert main(["params", folder]) == 0
    out = capsys.readouterr().out
    assert "2 layers, 4 heads sharing 2 K/V of 16, width 64" in out and "LM head (untied)" in out
    assert main(["params", "llama3-8b"]) == 0
    assert "(8.03 B)" in capsys.readouterr().out


def test_cli_inspect_draws_a_llama_folder(tmp_path, capsys):
    out = tmp_path / "a.png"
    assert main(["inspect", "The cat sat", "--model", str(FIX / "tiny_llama"), "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "4 heads" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# hook points

def _silu(g):
    return g / (1 + np.exp(-g.astype(np.float64)))


@pytest.mark.parametrize("name", NAMES)
def test_run_with_cache_is_the_plain_forward_and_its_activations_agree(name):
    """Logits bit-identical to the fused forward; every cached activation is what the next one is
    computed from (rotation, GQA pattern, per-head results, SwiGLU, the LM head's input)."""
    from qkv.nn import hook_names

    model = Llama.from_pretrained(FIX / name)
    ids = REF[name + ".ids"]
    c = model.config
    logits, cache = model.run_with_cache(ids, names=lambda n: True)
    np.testing.assert_array_equal(logits, model(ids))
    assert list(cache) == hook_names(model) and len(cache) == 2 + 18 * c.n_layer
    B, L = ids.shape
    rope = dict(theta=c.rope_theta, scaling=c.rope_scaling)
    for i in range(c.n_layer):
        a = lambda n: cache[f"blocks.{i}.{n}"]  # noqa: E731
        assert a("attn.hook_q").shape == (B, L, c.n_head, c.head_dim)
        assert a("attn.hook_k").shape == a("attn.hook_v").shape == (B, L, c.n_kv_head, c.head_dim)
        np.testing.assert_allclose(a("attn.hook_rot_k"), qkv.rope(np.ascontiguousarray(a("attn.hook_k")),
                                                                  np.arange(L), **rope), atol=1e-6)
        p = a("attn.hook_pattern")  # (B, H, L, L)
        np.testing.assert_allclose(p.sum(-1), 1, atol=1e-5)
        assert (p[..., np.triu_indices(L, 1)[0], np.triu_indices(L, 1)[1]] == 0).all()
        group = c.n_head // c.n_kv_head
        v = np.repeat(a("attn.hook_v").transpose(0, 2, 1, 3), group, axis=1)  # (B, H, L, d)
        np.testing.assert_allclose(a("attn.hook_z"), (p @ v).transpose(0, 2, 1, 3), atol=1e-5)
        bias = model.h[i].attn.c_proj.bias
        np.testing.assert_allclose(a("attn.hook_result").sum(2) + (0 if bias is None else bias), a("hook_attn_out"),
                                   atol=1e-5)
        np.testing.assert_allclose(a("mlp.hook_post"), _silu(a("mlp.hook_pre")) * a("mlp.hook_pre_linear"),
                                   atol=1e-5)
        np.testing.assert_allclose(a("hook_resid_post"), a("hook_resid_mid") + a("hook_mlp_out"), atol=1e-6)
    np.testing.assert_allclose(cache["ln_final.hook_normalized"] @ model._head(), logits, atol=1e-4)


def test_hook_edits_flow_downstream():
    """Zeroing head 1 in hook_z or in hook_result gives the same logits; an edit of mlp.hook_pre is
    what hook_post then holds; names are checked."""
    model = Llama.from_pretrained(FIX / "tiny_llama")
    ids = REF["tiny_llama.ids"]

    def zero_z(z, name):
        z = z.copy()
        z[:, :, 1] = 0
        return z

    def zero_result(r, name):
        r = r.copy()
        r[:, :, 1] = 0
        return r

    a = model.run_with_hooks(ids, {"blocks.0.attn.hook_z": zero_z})
    b = model.run_with_hooks(ids, {"blocks.0.attn.hook_result": zero_result})
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.abs(a - model(ids)).max() > 1e-3
    with model.hooks({"blocks.1.mlp.hook_pre": lambda g, n: np.zeros_like(g)}):
        _, cache = model.run_with_cache(ids, names=["blocks.1.mlp.hook_post"])
    assert (cache["blocks.1.mlp.hook_post"] == 0).all()
    with pytest.raises(ValueError, match="is not a hook point of this Llama"):
        model.run_with_cache(ids, names=["blocks.0.attn.hook_rot_v"])


def test_hooks_during_generation_see_each_step():
    model = Llama.from_pretrained(FIX / "tiny_qwen2")
    seen = []
    with model.hooks({"blocks.0.attn.hook_rot_k": lambda k, n: seen.append(k.shape)}):
        out = model.generate([[5, 6, 7]], 3, top_k=1, eos_token_id=None)
    assert out[0] == model.generate([[5, 6, 7]], 3, top_k=1, eos_token_id=None)[0]
    assert seen == [(1, 3, 2, 16), (1, 1, 2, 16), (1, 1, 2, 16)]


def test_cli_embed_refuses_a_llama_folder(capsys):
    assert main(["embed", "--model", str(FIX / "tiny_qwen2"), "hi"]) == 2
    assert "holds a Qwen2 decoder (model_type 'qwen2'); sentence embeddings need" in capsys.readouterr().err

