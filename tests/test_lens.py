"""qkv.lens against hand computations in float64 (tests/hooks_reference.py): logit lens, residual
decomposition, direct logit attribution, activation patching and the head detectors."""

import numpy as np
import pytest

import qkv.lens as lens
from hooks_reference import gpt_forward, layer_norm, host, small_encoder, small_gpt

IDS = np.random.default_rng(3).integers(0, 64, (2, 12))


@pytest.fixture(scope="module")
def run():
    model = small_gpt(seed=4)
    logits, cache = model.run_with_cache(IDS)
    return model, logits, cache


def close(actual, expected, name=""):
    expected = np.asarray(expected)
    tol = 2e-4 * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=tol, err_msg=name)


def test_accumulated_resid_and_logit_lens(run):
    model, logits, cache = run
    _, acts = gpt_forward(model, IDS)
    resid = [acts["blocks.0.hook_resid_pre"], acts["blocks.1.hook_resid_pre"], acts["blocks.1.hook_resid_post"]]
    close(lens.accumulated_resid(cache), np.stack(resid))
    normed = [layer_norm(r, model.ln_f.weight, model.ln_f.bias, model.ln_f.eps) for r in resid]
    close(lens.accumulated_resid(cache, apply_ln=True), np.stack(normed))
    lensed = lens.logit_lens(model, cache)
    assert lensed.shape == (3,) + logits.shape
    close(lensed, np.stack(normed) @ host(model.embeddings.wte).T)
    np.testing.assert_allclose(lensed[-1], logits, atol=1e-5, rtol=0)  # the last layer is the model's output


def test_decompose_resid_adds_up(run):
    model, _, cache = run
    labels, parts = lens.decompose_resid(cache)
    assert labels == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    assert parts.shape == (6,) + cache["hook_embed"].shape
    close(host(parts).sum(0), cache["blocks.1.hook_resid_post"])
    m = small_gpt(attn_only=True)
    labels, parts = lens.decompose_resid(m.run_with_cache(IDS)[1])
    assert labels == ["embed", "pos_embed", "0_attn_out", "1_attn_out"]


def test_direct_logit_attribution_against_hand_and_the_logit_difference(run):
    model, logits, cache = run
    _, acts = gpt_forward(model, IDS)
    a, b, pos = 5, 17, -1
    dla = lens.direct_logit_attribution(model, cache, a, b, position=pos)
    assert dla.shape == (2, 4)
    wte, g = host(model.embeddings.wte), host(model.ln_f.weight)
    final = acts["blocks.1.hook_resid_post"][:, pos]  # (B, C)
    scale = np.sqrt(final.var(-1) + model.ln_f.eps)[:, None]
    direction = (wte[a] - wte[b]) * g

    def attr(piece):  # (B, C) -> (B,): a piece of the stream through ln_final (linearised) to the logit diff
        return ((piece - piece.mean(-1, keepdims=True)) / scale) @ direction

    expected = np.zeros((2, 4))
    for i in range(2):
        w_up = host(model.h[i].attn.c_proj.weight).reshape(4, 8, 32)
        for h in range(4):
            expected[i, h] = attr(acts[f"blocks.{i}.attn.hook_z"][:, pos, h] @ w_up[h]).mean()
    close(dla, expected)
    # heads + everything else + ln_final's bias = the model's logit difference, per row
    rest = attr(acts["hook_embed"][:, pos]) + attr(acts["hook_pos_embed"][:, pos])
    for i in range(2):
        rest = rest + attr(np.broadcast_to(host(model.h[i].attn.c_proj.bias), final.shape))
        rest = rest + attr(acts[f"blocks.{i}.hook_mlp_out"][:, pos])
    diff = logits[:, pos, a].astype(np.float64) - logits[:, pos, b]
    bias = host(model.ln_f.bias) @ (wte[a] - wte[b])
    np.testing.assert_allclose(dla.sum() + rest.mean() + bias, diff.mean(), atol=1e-3)


def test_activation_patching_against_hand(run):
    model, _, _ = run
    clean, corrupt = IDS[:1], IDS[1:]
    a, b = 5, 17

    def metric(logits):
        return logits[0, -1, a] - logits[0, -1, b]

    for name, per, n_cells, axis in [("hook_resid_pre", "position", 12, 1), ("attn.hook_z", "head", 4, 2),
                                     ("attn.hook_pattern", "head", 4, 1), ("hook_mlp_out", "position", 12, 1)]:
        got = lens.activation_patching(model, clean, corrupt, metric, names=name, per=per)
        assert got.shape == (2, n_cells)
        _, clean_acts = gpt_forward(model, clean)
        for i in range(2):
            for c in range(n_cells):
                hook = f"blocks.{i}.{name}"

                def patch(x, _, c=c, hook=hook):
                    x = x.copy()
                    idx = (slice(None),) * axis + (c,)
                    x[idx] = clean_acts[hook][idx]
                    return x

                logits_ref, _ = gpt_forward(model, corrupt, edits={hook: patch})
                np.testing.assert_allclose(got[i, c], metric(logits_ref), atol=2e-3, err_msg=f"{name} {i} {c}")
    both = lens.activation_patching(model, clean, corrupt, metric, names=["hook_resid_pre", "hook_attn_out"])
    assert set(both) == {"hook_resid_pre", "hook_attn_out"}
    # patching the whole clean stream at layer 0, position by position: the last position carries it all
    clean_metric = metric(model(clean))
    patched = model.run_with_hooks(corrupt, hooks={"blocks.1.hook_resid_pre": _last(model, clean)})
    np.testing.assert_allclose(both["hook_resid_pre"][1, -1], metric(patched), atol=1e-5)
    assert np.isfinite(clean_metric)


def _last(model, clean):
    _, cache = model.run_with_cache(clean, names=["blocks.1.hook_resid_pre"])

    def fn(x, name):
        x = x.copy()
        x[:, -1] = cache[name][:, -1]
        return x
    return fn


def _synthetic_patterns(L, period):
    """(1, 4, L, L): head 0 previous-token, head 1 induction, head 2 uniform, head 3 attends to itself."""
    p = np.zeros((1, 4, L, L))
    p[0, 0, 0, 0] = 1
    for i in range(1, L):
        p[0, 0, i, i - 1] = 1
    for i in range(L):
        j = i - period + 1 if i >= period else 0
        p[0, 1, i, j] = 1
    p[0, 2] = np.tril(np.ones((L, L))) / np.arange(1, L + 1)[:, None]
    p[0, 3] = np.eye(L)
    return p


def test_head_detectors_on_known_patterns():
    L, period = 10, 4
    p = _synthetic_patterns(L, period)
    prev = lens.previous_token_score(p)
    ind = lens.induction_score(p, period)
    uniform_prev = np.mean([1 / (i + 1) for i in range(1, L)])
    uniform_ind = np.mean([1 / (i + 1) for i in range(period, L)])
    np.testing.assert_allclose(prev, [1, 1 / (L - 1), uniform_prev, 0])  # head 1 looks at 0 from 1
    np.testing.assert_allclose(ind, [0, 1, uniform_ind, 0])
    np.testing.assert_allclose(lens.induction_score(p[0].astype(np.float32), period), ind, atol=1e-7)  # (H, L, L)
    # period 1: the induction target of i is i itself
    np.testing.assert_allclose(lens.induction_score(p, 1), [0, 0, np.mean(1 / np.arange(2, L + 1)), 1])


def test_head_detectors_on_a_cache(run):
    model, _, cache = run
    half = IDS[:, :6]
    _, c = model.run_with_cache(np.concatenate([half, half], axis=1), names=lambda n: n.endswith("hook_pattern"))
    scores = lens.induction_score(c, 6)
    assert scores.shape == (2, 4) and scores.dtype == np.float64
    np.testing.assert_allclose(scores[1], lens.induction_score(c["blocks.1.attn.hook_pattern"], 6))
    prev = lens.previous_token_score(cache)
    assert prev.shape == (2, 4) and ((prev >= 0) & (prev <= 1)).all()


def test_errors(run):
    model, _, cache = run
    _, partial = model.run_with_cache(IDS, names=["blocks.0.hook_resid_pre"])
    with pytest.raises(ValueError, match="accumulated_resid needs blocks.1.hook_resid_pre in the cache"):
        lens.accumulated_resid(partial)
    with pytest.raises(ValueError, match="induction_score needs blocks.0.attn.hook_pattern"):
        lens.induction_score(partial, 3)
    with pytest.raises(ValueError, match="period must be an int in"):
        lens.induction_score(cache, 12)
    with pytest.raises(ValueError, match="pattern must be"):
        lens.previous_token_score(np.zeros((3, 4)))
    enc = small_encoder()
    _, ecache = enc.run_with_cache(np.array([[1, 2, 3]]))
    assert lens.accumulated_resid(ecache).shape == (3, 1, 3, 16)
    with pytest.raises(ValueError, match="logit_lens needs a GPT"):
        lens.logit_lens(enc, ecache)
    with pytest.raises(ValueError, match="per must be"):
        lens.activation_patching(model, IDS, IDS, lambda x: 0.0, per="layer")
    with pytest.raises(ValueError, match="same shape"):
        lens.activation_patching(model, IDS, IDS[:, :5], lambda x: 0.0)
    with pytest.raises(ValueError, match="not a hook point"):
        lens.activation_patching(model, IDS, IDS, lambda x: 0.0, names="hook_resid_pree")
    with pytest.raises(ValueError, match="token_a must be a token id"):
        lens.direct_logit_attribution(model, cache, 64, 1)
