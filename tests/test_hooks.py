"""Hook points and the activation cache (qkv.nn.hooks) against a float64 forward written out by hand
(tests/hooks_reference.py): every activation, every edit's downstream effect, the fast path's logits
bit for bit, names and errors."""

import numpy as np
import pytest

import qkv
from hooks_reference import encoder_forward, gpt_forward, small_encoder, small_gpt
from qkv.nn import ActivationCache, hook_names, hooks

IDS = np.random.default_rng(1).integers(0, 64, (2, 13))


@pytest.fixture(scope="module")
def model():
    return small_gpt()


def close(actual, expected, name=""):
    expected = np.asarray(expected)
    tol = 2e-4 * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=tol, err_msg=name)


def test_hook_names_gpt(model):
    names = hook_names(model)
    block0 = ["blocks.0.hook_resid_pre", "blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_q",
              "blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z",
              "blocks.0.attn.hook_result", "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid",
              "blocks.0.ln2.hook_normalized", "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post",
              "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]
    assert names == ["hook_embed", "hook_pos_embed"] + block0 + [n.replace("blocks.0", "blocks.1") for n in block0] + [
        "ln_final.hook_normalized"]


@pytest.mark.parametrize("backend_name", ["cpu", "numpy"])
def test_every_activation_matches_the_float64_reference(model, backend_name):
    logits_ref, acts_ref = gpt_forward(model, IDS)
    with qkv.use_backend(backend_name):
        logits, cache = model.run_with_cache(IDS, names=lambda n: True)
    assert isinstance(cache, ActivationCache) and cache.model is model
    assert list(cache) == hook_names(model)
    for name in hook_names(model):
        assert cache[name].shape == acts_ref[name].shape and cache[name].dtype == np.float32, name
        close(cache[name], acts_ref[name], name)
    close(logits, logits_ref)
    B, L = IDS.shape
    assert cache["blocks.1.attn.hook_q"].shape == (B, L, 4, 8)
    assert cache["blocks.1.attn.hook_pattern"].shape == (B, 4, L, L)
    assert cache["blocks.1.attn.hook_result"].shape == (B, L, 4, 32)
    p = cache["blocks.0.attn.hook_pattern"]
    assert (p[..., np.triu_indices(L, 1)[0], np.triu_indices(L, 1)[1]] == 0).all()  # masked keys exactly 0


@pytest.mark.parametrize("names", [None, ["blocks.1.attn.hook_pattern"], lambda n: True, lambda n: "mlp" in n])
def test_logits_bit_identical_with_and_without_cache(model, names):
    plain = model(IDS)
    logits, _ = model.run_with_cache(IDS, names=names)
    np.testing.assert_array_equal(logits, plain)
    last, _ = model.run_with_cache(IDS, names=names, last_only=True)
    np.testing.assert_array_equal(last, model(IDS, last_only=True))


def test_names_filter_keeps_only_the_requested(model):
    _, cache = model.run_with_cache(IDS, names=["blocks.1.attn.hook_z", "hook_embed"])
    assert list(cache) == ["hook_embed", "blocks.1.attn.hook_z"]  # forward order
    _, cache = model.run_with_cache(IDS, names=lambda n: n.endswith("hook_pattern"))
    assert list(cache) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    _, cache = model.run_with_cache(IDS)  # None: everything but the large per-head results
    assert set(cache) == {n for n in hook_names(model) if not n.endswith("hook_result")}
    for a in cache.values():  # each a compact array of its own, not a view pinning a bigger buffer
        assert a.base is None


def test_cached_arrays_are_not_overwritten_by_later_layers(model):
    _, cache = model.run_with_cache(IDS)
    _, alone = model.run_with_cache(IDS, names=["blocks.0.attn.hook_q", "blocks.0.hook_resid_mid"])
    for name in alone:
        np.testing.assert_array_equal(cache[name], alone[name])


def test_identity_hooks_change_nothing(model):
    plain = model(IDS)
    seen = []

    def same(x, name):
        seen.append(name)
        return x

    def copy(x, name):
        return x.copy()

    all_names = hook_names(model)
    np.testing.assert_array_equal(model.run_with_hooks(IDS, hooks={n: same for n in all_names}), plain)
    assert seen == all_names
    np.testing.assert_array_equal(model.run_with_hooks(IDS, hooks={n: copy for n in all_names}), plain)
    np.testing.assert_array_equal(model.run_with_hooks(IDS, hooks={n: lambda x, n: None for n in all_names}), plain)
    np.testing.assert_array_equal(model(IDS), plain)  # nothing left behind


def _zero_head(axis, head):
    def fn(x, name):
        x = x.copy()
        idx = [slice(None)] * x.ndim
        idx[axis] = head
        x[tuple(idx)] = 0
        return x
    return fn


def _uniform_pattern(x, name):  # head 1 attends evenly to every visible key
    x = x.copy()
    L = x.shape[-1]
    x[:, 1] = np.tril(np.ones((L, L))) / np.arange(1, L + 1)[:, None]
    return x


def _scale_in_place(x, name):  # an in-place edit that returns None
    x[:, :, 2] *= 3.0


EDITS = [
    ("blocks.0.attn.hook_q", _zero_head(2, 1)),
    ("blocks.1.attn.hook_k", _zero_head(2, 3)),
    ("blocks.0.attn.hook_v", _zero_head(2, 0)),
    ("blocks.1.attn.hook_z", _zero_head(2, 2)),
    ("blocks.0.attn.hook_z", _scale_in_place),
    ("blocks.0.attn.hook_pattern", _uniform_pattern),
    ("blocks.1.attn.hook_pattern", _zero_head(1, 0)),
    ("blocks.0.attn.hook_result", _zero_head(2, 1)),
    ("blocks.1.attn.hook_result", _scale_in_place),
    ("blocks.0.mlp.hook_pre", _zero_head(2, 5)),
    ("blocks.1.mlp.hook_post", _scale_in_place),
    ("blocks.0.ln1.hook_normalized", _zero_head(1, 4)),
    ("blocks.1.hook_resid_mid", _scale_in_place),
    ("hook_pos_embed", _zero_head(1, 0)),
]


@pytest.mark.parametrize("name, fn", EDITS, ids=[f"{n}-{getattr(f, '__name__', '')}" for n, f in EDITS])
def test_edits_change_the_output_as_the_reference(model, name, fn):
    plain = model(IDS)
    logits_ref, acts_ref = gpt_forward(model, IDS, edits={name: fn})
    with model.hooks({name: fn}):
        logits, cache = model.run_with_cache(IDS, names=lambda n: True)
    close(logits, logits_ref, name)
    assert np.abs(logits - plain).max() > 1e-3, f"editing {name} changed nothing"
    for n in hook_names(model):
        close(cache[n], acts_ref[n], f"{n} after editing {name}")


def test_hooks_context_nests_and_restores(model):
    plain = model(IDS)
    zero = _zero_head(2, 2)
    _, ref_one = gpt_forward(model, IDS, edits={"blocks.1.attn.hook_z": zero})
    ref_two, _ = gpt_forward(model, IDS, edits={"blocks.1.attn.hook_z": zero, "blocks.0.attn.hook_v": _zero_head(2, 0)})
    with model.hooks({"blocks.1.attn.hook_z": zero}):
        _, cache = model.run_with_cache(IDS, names=["blocks.1.attn.hook_z"])
        close(cache["blocks.1.attn.hook_z"], ref_one["blocks.1.attn.hook_z"])  # the cache sees the edit
        with model.hooks([("blocks.0.attn.hook_v", _zero_head(2, 0))]):
            close(model(IDS), ref_two)
    np.testing.assert_array_equal(model(IDS), plain)
    with pytest.raises(RuntimeError):
        with model.hooks({"blocks.1.attn.hook_z": zero}):
            raise RuntimeError("inside")
    np.testing.assert_array_equal(model(IDS), plain)  # restored after an exception too


def test_patching_a_whole_residual_gives_the_clean_run(model):
    clean, corrupt = IDS, IDS[:, ::-1].copy()
    clean_logits, cache = model.run_with_cache(clean, names=["blocks.1.hook_resid_pre"])
    patched = model.run_with_hooks(corrupt, hooks={"blocks.1.hook_resid_pre": lambda x, n: cache[n]})
    np.testing.assert_array_equal(patched, clean_logits)


def test_hooks_with_a_kv_cache(model):
    """Prefill then token by token through the KV cache, under a hook: the same as one hooked pass."""
    hooks = {"blocks.0.attn.hook_z": _zero_head(2, 1)}
    full = model.run_with_hooks(IDS, hooks=hooks)
    kv = model.new_cache(IDS.shape[0], IDS.shape[1])
    with model.hooks(hooks):
        steps = [model(IDS[:, :5], cache=kv)]
        for t in range(5, IDS.shape[1]):
            logits, cache = model.run_with_cache(IDS[:, t:t + 1], names=["blocks.1.attn.hook_pattern"], cache=kv)
            steps.append(logits)
    close(np.concatenate(steps, axis=1), full)
    assert cache["blocks.1.attn.hook_pattern"].shape == (2, 4, 1, IDS.shape[1])
    np.testing.assert_allclose(cache["blocks.1.attn.hook_pattern"].sum(-1), 1, atol=1e-5)


def test_attention_only_blocks(model):
    m = small_gpt(attn_only=True)
    names = hook_names(m)
    assert not any("mlp" in n or "ln2" in n or "resid_mid" in n for n in names)
    assert "blocks.1.hook_resid_post" in names
    logits_ref, acts_ref = gpt_forward(m, IDS)
    logits, cache = m.run_with_cache(IDS, names=lambda n: True)
    close(logits, logits_ref)
    for n in names:
        close(cache[n], acts_ref[n], n)


def test_encoder_activations_match_the_reference():
    m = small_encoder()
    ids = np.random.default_rng(2).integers(0, 50, (3, 11))
    am = np.ones((3, 11), np.int64)
    am[1, 7:] = 0  # right padding (kv_lengths)
    for mask in (am, np.where(np.arange(11) == 3, 0, am)):  # and a hole (a boolean mask)
        plain = m(ids, mask)
        out, cache = m.run_with_cache(ids, names=lambda n: True, attention_mask=mask)
        np.testing.assert_array_equal(out, plain)
        out_ref, acts_ref = encoder_forward(m, ids, mask)
        close(out, out_ref)
        assert list(cache) == hook_names(m)
        for n in hook_names(m):
            close(cache[n], acts_ref[n], n)
    assert hook_names(m)[:5] == ["hook_embed", "hook_pos_embed", "hook_token_type_embed", "ln_embed.hook_normalized",
                                 "blocks.0.hook_resid_pre"]
    edit = {"blocks.1.attn.hook_pattern": _uniform_pattern}
    out_ref, _ = encoder_forward(m, ids, np.ones_like(am), edits=edit)
    close(m.run_with_hooks(ids, hooks=edit), out_ref)


def test_bad_names_and_hooks(model):
    with pytest.raises(ValueError, match=r"'blocks.0.attn.hook_zz' is not a hook point of this GPT; close names: "
                                         r"blocks.0.attn.hook_z"):
        model.run_with_cache(IDS, names=["blocks.0.attn.hook_zz"])
    with pytest.raises(ValueError, match="blocks.7.hook_resid_pre.*hook_names"):
        model.run_with_hooks(IDS, hooks={"blocks.7.hook_resid_pre": lambda x, n: None})
    with pytest.raises(ValueError, match="'blocks.0.mlp.hook_pre' is not a hook point"):
        small_gpt(attn_only=True).run_with_cache(IDS, names=["blocks.0.mlp.hook_pre"])
    with pytest.raises(TypeError, match="the hook on hook_embed must be callable"):
        model.run_with_hooks(IDS, hooks={"hook_embed": 3})
    with pytest.raises(ValueError, match=r"the hook on blocks.0.attn.hook_z returned shape \(2, 13, 4\); expected "
                                         r"\(2, 13, 4, 8\)"):
        model.run_with_hooks(IDS, hooks={"blocks.0.attn.hook_z": lambda x, n: x[..., 0]})
    with pytest.raises(ValueError, match="return_attention does not combine with hooks"):
        model.run_with_cache(IDS, return_attention=True)
    with pytest.raises(KeyError, match="close names"):
        model.run_with_cache(IDS, names=["hook_embed"])[1]["hook_embd"]
    np.testing.assert_array_equal(model(IDS), model.run_with_cache(IDS, names=[])[0])  # still usable after errors
    cross = qkv.nn.MultiHeadAttention(32, 4, cross=True)
    with pytest.raises(ValueError, match="hooks cover multi-head self-attention"):
        hooks.attention(cross, np.zeros((1, 3, 32), np.float32), hooks.HookPoints(hooks._Run({}, set())))
