"""Looking inside a model with an ActivationCache (model.run_with_cache): TransformerLens's analysis
helpers on qkv's models.

    logits, cache = model.run_with_cache(ids)
    qkv.lens.logit_lens(model, cache)          # (n_layers + 1, B, L, V) what each layer would predict
    qkv.lens.decompose_resid(cache)            # labels, (2 + 2 n_layers, B, L, C) pieces of the stream
    qkv.lens.direct_logit_attribution(model, cache, a, b)   # (n_layers, H) each head's push to a over b
    qkv.lens.activation_patching(model, clean, corrupt, metric)  # (n_layers, L) patching effects
    qkv.lens.induction_score(cache, period)    # (n_layers, H) head detectors
    qkv.lens.previous_token_score(cache)

Shapes: n layers, B batch, L positions, C residual width, H heads, d head dim, V vocabulary.
Stacks of activations (accumulated_resid, logit_lens, decompose_resid) stay on the model's device;
scores (attribution, patching, detectors) are small float64 NumPy arrays on the host.

Conventions (and where they differ from TransformerLens):
- The logit lens normalises each layer's residual stream with ln_final's own statistics (the
  classic logit lens), so its last row is the model's logits. TransformerLens's
  accumulated_resid(apply_ln=True) divides every layer by the final layer's scale instead.
- direct_logit_attribution is linear, as TransformerLens's logit_attrs: each head's output
  (hook_z @ its Wv_up), centred, divided by the final residual stream's layer-norm scale, times
  ln_final's gain, dotted with the unembedding difference wte[a] - wte[b].
- Head detector scores are the mean attention over the positions that have a target (the ARENA /
  TransformerLens tutorial definition): previous-token, attention from i to i - 1 for i >= 1;
  induction on a sequence repeating with ``period``, attention from i to i - period + 1 (the token
  after the previous occurrence of token i) for i >= period. 1.0 is a perfect head.
"""

from collections.abc import Mapping

import numpy as np

import qkv
from qkv.nn.module import namespace


def _blocks(model):
    return model.h if hasattr(model, "h") else model.layer


def _act(cache, name, helper):
    try:
        return cache[name]
    except KeyError:
        raise ValueError(f"{helper} needs {name} in the cache: run_with_cache(ids) with names=None or with a list "
                         "that has it") from None


def _host(a):
    return np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float64)


def _gpt(model, helper):
    if not hasattr(model, "ln_f"):
        raise ValueError(f"{helper} needs a GPT (a final layer norm and an LM head), got {type(model).__name__}")


def accumulated_resid(cache, apply_ln=False):
    """The residual stream before each block and after the last: (n_layers + 1, B, L, C).

    apply_ln: pass each through ln_final (GPT only), with its own mean and variance."""
    model = cache.model
    n = len(_blocks(model))
    last = f"blocks.{n - 1}.hook_resid_post" if hasattr(model, "ln_f") else f"blocks.{n - 1}.ln2.hook_normalized"
    parts = [_act(cache, f"blocks.{i}.hook_resid_pre", "accumulated_resid") for i in range(n)]
    parts.append(_act(cache, last, "accumulated_resid"))
    stack = namespace(parts[0]).stack(parts)  # (n + 1, B, L, C)
    if apply_ln:
        _gpt(model, "accumulated_resid(apply_ln=True)")
        stack = model.ln_f(stack)
    return stack


def logit_lens(model, cache):
    """What each layer's residual stream predicts: ln_final then the LM head on accumulated_resid,
    (n_layers + 1, B, L, V). Row 0 is the embeddings, row n_layers the model's logits."""
    _gpt(model, "logit_lens")
    return qkv.linear(accumulated_resid(cache, apply_ln=True), model.embeddings.wte.T)


def decompose_resid(cache):
    """The final residual stream of a GPT as the sum of its pieces: (labels, (2 + 2 n, B, L, C)) with
    labels "embed", "pos_embed", then "{i}_attn_out" and "{i}_mlp_out" per block (attention-only
    blocks have no mlp piece). The pieces add up to blocks.{n-1}.hook_resid_post."""
    model = cache.model
    _gpt(model, "decompose_resid")
    labels, parts = ["embed", "pos_embed"], [_act(cache, "hook_embed", "decompose_resid"),
                                             _act(cache, "hook_pos_embed", "decompose_resid")]
    for i, blk in enumerate(_blocks(model)):
        labels.append(f"{i}_attn_out")
        parts.append(_act(cache, f"blocks.{i}.hook_attn_out", "decompose_resid"))
        if blk.mlp is not None:
            labels.append(f"{i}_mlp_out")
            parts.append(_act(cache, f"blocks.{i}.hook_mlp_out", "decompose_resid"))
    return labels, namespace(parts[0]).stack(parts)


def _token(t, B, name, V):
    t = np.broadcast_to(np.asarray(t), (B,))
    if t.dtype.kind not in "iu" or t.min() < 0 or t.max() >= V:
        raise ValueError(f"direct_logit_attribution: {name} must be a token id (or B of them) in [0, {V}), got {t}")
    return t


def head_results(model, cache, layer, position=slice(None)):
    """Each head's output at ``position``, hook_z @ its Wv_up, float64 on the host: (B, [L,] H, C)."""
    mha = _blocks(model)[layer].attn
    z = _host(_act(cache, f"blocks.{layer}.attn.hook_z", "head_results")[:, position])  # (B, [L,] H, d)
    w_up = _host(mha.c_proj.weight).reshape(mha.n_head, mha.head_dim, -1)  # (H, d, C)
    return np.einsum("...hd,hdc->...hc", z, w_up)


def direct_logit_attribution(model, cache, token_a, token_b, position=-1):
    """Each head's direct contribution to logit[token_a] - logit[token_b] at ``position``: (n_layers, H),
    the mean over the batch. token_a, token_b: ids, or (B,) arrays of ids (one per row)."""
    _gpt(model, "direct_logit_attribution")
    n = len(_blocks(model))
    final = _host(_act(cache, f"blocks.{n - 1}.hook_resid_post", "direct_logit_attribution")[:, position])  # (B, C)
    B, V = final.shape[0], model.config.vocab_size
    a, b = _token(token_a, B, "token_a", V), _token(token_b, B, "token_b", V)
    wte = _host(model.embeddings.wte)
    direction = (wte[a] - wte[b]) * _host(model.ln_f.weight)  # (B, C)
    scale = np.sqrt(final.var(axis=-1) + model.ln_f.eps)  # (B,) ln_final's scale of the whole stream
    out = np.empty((n, _blocks(model)[0].attn.n_head))
    for i in range(n):
        r = head_results(model, cache, i, position)  # (B, H, C)
        r -= r.mean(axis=-1, keepdims=True)  # ln_final centres each piece
        out[i] = (np.einsum("bhc,bc->bh", r, direction) / scale[:, None]).mean(axis=0)
    return out


_HEAD_AXIS = {"attn.hook_q": 2, "attn.hook_k": 2, "attn.hook_v": 2, "attn.hook_z": 2, "attn.hook_result": 2,
              "attn.hook_pattern": 1}


def activation_patching(model, clean_ids, corrupt_ids, metric, names=None, per="position"):
    """Run corrupt_ids with one piece of the clean run's activation patched in, for every layer and
    every position (per="position") or head (per="head"), and record ``metric(logits)`` (a float).

    names: the hook to patch, without "blocks.{i}.": default "hook_resid_pre" per position,
    "attn.hook_z" per head; any block hook per position (hook_pattern by query position); per head,
    attn.hook_q/k/v/z/result/pattern. A list of names gives {name: array}. Returns float64
    (n_layers, L) or (n_layers, H). One forward per cell (TransformerLens's get_act_patch_*)."""
    if per not in ("position", "head"):
        raise ValueError(f"activation_patching: per must be 'position' or 'head', got {per!r}")
    if isinstance(names, (list, tuple)):
        return {n: activation_patching(model, clean_ids, corrupt_ids, metric, n, per) for n in names}
    name = names or ("hook_resid_pre" if per == "position" else "attn.hook_z")
    if per == "head" and name not in _HEAD_AXIS:
        raise ValueError(f"activation_patching: per='head' patches one of {sorted(_HEAD_AXIS)}, got {name!r}")
    clean_ids, corrupt_ids = np.asarray(_host_ids(clean_ids)), np.asarray(_host_ids(corrupt_ids))
    if clean_ids.shape != corrupt_ids.shape:
        raise ValueError(f"activation_patching: clean_ids {clean_ids.shape} and corrupt_ids {corrupt_ids.shape} "
                         "must have the same shape")
    clean_ids, corrupt_ids = model.xp().asarray(clean_ids), model.xp().asarray(corrupt_ids)  # the model's device
    blocks = _blocks(model)
    full = [f"blocks.{i}.{name}" for i in range(len(blocks))]
    _, clean = model.run_with_cache(clean_ids, names=full)  # checks the names
    axis = _HEAD_AXIS[name] if per == "head" else (2 if name == "attn.hook_pattern" else 1)
    cells = blocks[0].attn.n_head if per == "head" else clean_ids.shape[-1]
    out = np.empty((len(blocks), cells))
    for i, hook in enumerate(full):
        for c in range(cells):
            idx = (slice(None),) * axis + (c,)

            def patch(x, _, idx=idx, src=clean[hook]):
                x = x.copy()
                x[idx] = src[idx]
                return x

            out[i, c] = float(metric(model.run_with_hooks(corrupt_ids, hooks={hook: patch})))
    return out


def _host_ids(ids):
    ids = ids.get() if hasattr(ids, "get") else np.asarray(ids)
    return ids[None] if ids.ndim == 1 else ids


def _pattern_stack(pattern, helper):
    """A cache -> [(B, H, L, L) per layer]; an array (B, H, L, L) or (H, L, L) -> [it]."""
    if isinstance(pattern, Mapping) and hasattr(pattern, "model"):
        n = len(_blocks(pattern.model))
        return [_act(pattern, f"blocks.{i}.attn.hook_pattern", helper) for i in range(n)], True
    if getattr(pattern, "ndim", 0) not in (3, 4) or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"{helper}: pattern must be (B, H, L, L), (H, L, L) or an ActivationCache, got shape "
                         f"{getattr(pattern, 'shape', type(pattern).__name__)}")
    return [pattern], False


def _stripe_mean(p, offset, start):
    """Mean over the batch and over queries i >= start of p[..., i, i - offset]: (H,)."""
    p = _host(p)
    i = np.arange(start, p.shape[-1])
    return p[..., i, i - offset].reshape(-1, p.shape[-3], len(i)).mean(axis=(0, 2))


def induction_score(pattern, period):
    """Mean attention from each position i >= period to i - period + 1 (the token after the previous
    occurrence of the current token, on a sequence repeating every ``period`` tokens): (H,) for a
    pattern (B, H, L, L) or (H, L, L); (n_layers, H) for an ActivationCache."""
    pats, stacked = _pattern_stack(pattern, "induction_score")
    L = pats[0].shape[-1]
    if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or not 1 <= period < L:
        raise ValueError(f"induction_score: period must be an int in [1, {L}) for patterns over {L} positions, "
                         f"got {period!r}")
    scores = np.stack([_stripe_mean(p, period - 1, period) for p in pats])
    return scores if stacked else scores[0]


def previous_token_score(pattern):
    """Mean attention from each position i >= 1 to i - 1: (H,) for a pattern, (n_layers, H) for a cache."""
    pats, stacked = _pattern_stack(pattern, "previous_token_score")
    if pats[0].shape[-1] < 2:
        raise ValueError("previous_token_score: needs at least 2 positions")
    scores = np.stack([_stripe_mean(p, 1, 1) for p in pats])
    return scores if stacked else scores[0]
