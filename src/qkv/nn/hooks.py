"""Hook points and the activation cache: TransformerLens's toolbox on qkv's models.

A hook point is a named activation of the forward pass. ``model.run_with_cache(ids, names)`` keeps
the named ones in an ActivationCache; ``model.run_with_hooks(ids, hooks={name: fn})`` and
``with model.hooks({name: fn}):`` call ``fn(activation, name)`` there: it returns None (observe) or
a replacement of the same shape, which flows on downstream (ablation, patching). The names are
TransformerLens's, so its tutorials translate line by line (``qkv.nn.hook_names(model)`` lists a
model's):

    GPT (pre-LN)                                  shape
    hook_embed, hook_pos_embed                    (B, L, C) token, position embeddings
    blocks.{i}.hook_resid_pre                     (B, L, C) the residual stream into block i
    blocks.{i}.ln1.hook_normalized                (B, L, C) ln_1's output (see below)
    blocks.{i}.attn.hook_q / hook_k / hook_v      (B, L, H, d)
    blocks.{i}.attn.hook_pattern                  (B, H, Lq, Lk) softmax probabilities
    blocks.{i}.attn.hook_z                        (B, L, H, d) pattern @ v, per head
    blocks.{i}.attn.hook_result                   (B, L, H, C) each head's output after its Wv_up
                                                  (no bias); large, so only when asked by name
    blocks.{i}.hook_attn_out                      (B, L, C) attention output (c_proj, with bias)
    blocks.{i}.hook_resid_mid                     (B, L, C) resid_pre + attn_out
    blocks.{i}.ln2.hook_normalized                (B, L, C)
    blocks.{i}.mlp.hook_pre / hook_post           (B, L, n_inner) before / after the activation
    blocks.{i}.hook_mlp_out                       (B, L, C)
    blocks.{i}.hook_resid_post                    (B, L, C) resid_mid + mlp_out
    ln_final.hook_normalized                      (B, L, C) what the LM head reads

An attention-only block (no MLP) has no resid_mid, ln2 or mlp points: resid_post = resid_pre +
attn_out, as in TransformerLens's attn_only models. The Encoder (BERT, post-LN) uses the names of
TransformerLens's BertBlock: hook_embed, hook_pos_embed, hook_token_type_embed,
ln_embed.hook_normalized (the embeddings after their layer norm = blocks.0.hook_resid_pre); per
block resid_pre, the attention points, attn_out, resid_mid = resid_pre + attn_out,
ln1.hook_normalized = ln_1(resid_mid), mlp points, mlp_out, resid_post = ln1 out + mlp_out and
ln2.hook_normalized = ln_2(resid_post), the block's output.

hook_normalized is the layer norm's full output, gain and bias applied. TransformerLens folds the
gains into the next layer's weights (fold_ln=True), so its hook_normalized times its folded
weights is ours times our weights: ``cache["ln_final.hook_normalized"] @ W_U`` is the logits in
both. There is no hook_scale or hook_attn_scores.

Cost: the model's forward checks one attribute (``_hook_run``); with no hook and no cache active
it runs the fused fast path, unchanged. With hooks, the forward below runs layer by layer into
fresh arrays (no shared work buffers, so cached arrays stay valid), with the same kernels: logits
are bit-identical to a plain forward while nothing is edited. The attention pattern is computed
only when asked for, from the fused kernel's log-sum-exp: exp(scale q k^T - lse), masked. When a
hook edits hook_pattern, z is recomputed as pattern @ v; when one edits hook_result, the attention
output is the sum of the results plus the bias; when one edits mlp.hook_pre, hook_post is the
activation of the edited pre-activation. What counts as an edit is a change of values, in place
or not (the result is compared with a copy taken before the hooks ran).
"""

import difflib
from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np

import qkv
from qkv import _backend
from qkv.nn.module import namespace


class ActivationCache(Mapping):
    """What run_with_cache kept: hook name -> array (on the model's device), in forward order.

    ``cache.model`` is the model that ran; qkv.lens takes the cache for the logit lens, residual
    decomposition, head attribution and head detectors.
    """

    def __init__(self, acts, model):
        self._acts, self.model = acts, model

    def __getitem__(self, name):
        try:
            return self._acts[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._acts), n=3, cutoff=0.6)
            raise KeyError(f"{name!r} is not in this cache" + (f"; close names: {close}" if close else "")
                           + " (run_with_cache(ids, names=...) keeps only the names asked for)") from None

    def __iter__(self):
        return iter(self._acts)

    def __len__(self):
        return len(self._acts)

    def __repr__(self):
        return f"ActivationCache({len(self)} activations: {list(self._acts)[:4]}{' ...' if len(self) > 4 else ''})"


def hook_names(model):
    """Every hook point of ``model`` (GPT or Encoder), in forward order, hook_result included."""
    return list(model._hook_names())


class _Run:
    """The hooks of one forward: fns {name: [fn, ...]} to call, keep (names) to cache into acts."""

    def __init__(self, fns, keep):
        self.fns, self.keep, self.acts = fns, keep, {}
        self.asked = set(fns) | set(keep)

    def point(self, name, x, track=False):
        """x after the hooks on ``name`` (and kept if asked); with track, (x, whether a hook changed it)."""
        fns = self.fns.get(name, ())
        before = x.copy() if track and fns else None
        y = x
        for fn in fns:
            new = fn(y, name)
            if new is not None:
                y = _replacement(name, y, new)
        if name in self.keep:
            self.acts[name] = y if y.base is None else y.copy()  # a view would pin (or share) a bigger buffer
        if not track:
            return y
        return y, before is not None and bool((y != before).any())


def _replacement(name, x, new):
    if _backend.array_kind(new) != _backend.array_kind(x):
        raise TypeError(f"the hook on {name} returned a {type(new).__name__}; expected an array like its input "
                        f"({type(x).__name__})")
    if new.shape != x.shape:
        raise ValueError(f"the hook on {name} returned shape {tuple(new.shape)}; expected {tuple(x.shape)}")
    return new if new.dtype == x.dtype else new.astype(x.dtype)


class HookPoints:
    """A _Run seen from one layer: names relative to ``prefix`` ("blocks.3.attn.")."""

    __slots__ = ("run", "prefix")

    def __init__(self, run, prefix=""):
        self.run, self.prefix = run, prefix

    def __call__(self, name, x):
        return self.run.point(self.prefix + name, x)

    def edit(self, name, x):
        """(x after the hooks, whether one changed it): for points whose downstream is recomputed."""
        return self.run.point(self.prefix + name, x, track=True)

    def wants(self, name):
        return self.prefix + name in self.run.asked

    def child(self, name):
        return HookPoints(self.run, f"{self.prefix}{name}.")


class HookedModel:
    """run_with_cache, run_with_hooks and hooks() for a model with ``_hook_names()`` whose forward
    runs its hooked path while ``self._hook_run`` is set."""

    _hook_run = None  # the active _Run, or None: the fast path

    def run_with_cache(self, ids, names=None, **forward_kwargs):
        """``(output, cache)``: the forward's output (bit-identical to ``model(ids, **forward_kwargs)``
        unless hooks active from ``with model.hooks(...)`` edit something) and an ActivationCache.

        names: None (every hook point but the large attn.hook_result), a list of names, or a
        callable name -> bool applied to hook_names(model) (hook_result included). Only these are kept.
        """
        all_names = self._hook_names()
        if names is None:
            keep = [n for n in all_names if not n.endswith("attn.hook_result")]
        elif callable(names):
            keep = [n for n in all_names if names(n)]
        else:
            if isinstance(names, str):
                names = [names]
            _check_names(self, names, all_names, "run_with_cache")
            keep = list(names)
        outer = self._hook_run
        run = self._hook_run = _Run(outer.fns if outer is not None else {}, set(keep))
        try:
            out = self(ids, **forward_kwargs)
        finally:
            self._hook_run = outer
        return out, ActivationCache({n: run.acts[n] for n in all_names if n in run.acts}, self)

    def run_with_hooks(self, ids, hooks, **forward_kwargs):
        """The forward with ``hooks`` ({name: fn or [fns]}, or [(name, fn), ...]) active for this call."""
        with self.hooks(hooks):
            return self(ids, **forward_kwargs)

    @contextmanager
    def hooks(self, hooks):
        """``with model.hooks({name: fn}):`` every forward inside calls fn(activation, name) at name;
        fn returns None or a replacement of the same shape. Nested blocks add up (outer hooks first)."""
        fns = _check_hooks(self, hooks)
        outer = self._hook_run
        merged = {n: list(f) for n, f in outer.fns.items()} if outer is not None else {}
        for n, f in fns.items():
            merged.setdefault(n, []).extend(f)
        self._hook_run = _Run(merged, outer.keep if outer is not None else set())
        try:
            yield self
        finally:
            self._hook_run = outer


def _check_names(model, names, all_names, op):
    valid = set(all_names)
    for n in names:
        if not isinstance(n, str) or n not in valid:
            close = difflib.get_close_matches(str(n), all_names, n=3, cutoff=0.5)
            raise ValueError(f"{op}: {n!r} is not a hook point of this {type(model).__name__}"
                             + (f"; close names: {', '.join(close)}" if close else "")
                             + " (qkv.nn.hook_names(model) lists them)")


def _check_hooks(model, hooks):
    """{name: fn or [fn]} or [(name, fn)] -> {name: [fn]}, names and callables checked."""
    pairs = hooks.items() if isinstance(hooks, Mapping) else hooks
    try:
        pairs = list(pairs)
        out = {}
        for name, fn in pairs:
            out.setdefault(name, []).extend(fn if isinstance(fn, (list, tuple)) else [fn])
    except (TypeError, ValueError):
        raise TypeError("hooks must be a dict {name: fn} or a list of (name, fn) pairs") from None
    _check_names(model, list(out), model._hook_names(), "hooks")
    for name, fns in out.items():
        for fn in fns:
            if not callable(fn):
                raise TypeError(f"hooks: the hook on {name} must be callable fn(activation, name), got "
                                f"{type(fn).__name__}")
    return out


def block_names(prefix, block):
    """The hook points of one Block, in forward order."""
    attn = [f"{prefix}attn.hook_{s}" for s in ("q", "k", "v", "pattern", "z", "result")]
    if block.mlp is None:
        return ([f"{prefix}hook_resid_pre", f"{prefix}ln1.hook_normalized"] + attn
                + [f"{prefix}hook_attn_out", f"{prefix}hook_resid_post"])
    mlp = [f"{prefix}mlp.hook_pre", f"{prefix}mlp.hook_post", f"{prefix}hook_mlp_out"]
    if block.pre_ln:
        return ([f"{prefix}hook_resid_pre", f"{prefix}ln1.hook_normalized"] + attn
                + [f"{prefix}hook_attn_out", f"{prefix}hook_resid_mid", f"{prefix}ln2.hook_normalized"] + mlp
                + [f"{prefix}hook_resid_post"])
    return ([f"{prefix}hook_resid_pre"] + attn + [f"{prefix}hook_attn_out", f"{prefix}hook_resid_mid",
                                                  f"{prefix}ln1.hook_normalized"] + mlp
            + [f"{prefix}hook_resid_post", f"{prefix}ln2.hook_normalized"])


# ---------------------------------------------------------------------------------------------
# the hooked forward of each layer: the same ops as the layers' __call__, into fresh arrays,
# with a hook point at every named activation.


def embed(emb, ids, hp, start=0, position_ids=None, token_type_ids=None):
    """Embedding: ids (B, L) -> (B, L, C) through hook_embed, hook_pos_embed (hook_token_type_embed)."""
    B, L = ids.shape
    C = emb.wte.shape[1]
    xp = namespace(emb.wte)
    if position_ids is None:
        if start + L > emb.wpe.shape[0]:
            raise ValueError(f"positions {start}..{start + L - 1} exceed the {emb.wpe.shape[0]} learned positions")
        pos = emb.wpe[start:start + L]  # (L, C)
    else:
        if int(position_ids.max()) >= emb.wpe.shape[0]:
            raise ValueError(f"position {int(position_ids.max())} exceeds the {emb.wpe.shape[0]} learned positions")
        pos = emb.wpe[position_ids]  # (B, L, C)
    tok = hp("hook_embed", emb.wte[ids])  # (B, L, C)
    pos = hp("hook_pos_embed", xp.broadcast_to(pos, (B, L, C)).copy())
    x = tok + pos
    if emb.wtt is not None:
        tt = emb.wtt[token_type_ids] if token_type_ids is not None else xp.broadcast_to(emb.wtt[0], (B, L, C)).copy()
        x += hp("hook_token_type_embed", tt)
    return x


def _heads(a):
    """(B, L, H, d) -> (B, H, L, d) view whose last axis is contiguous (copied once if it is not)."""
    if a.strides[-1] != a.itemsize:
        a = namespace(a).ascontiguousarray(a)
    return a.transpose(0, 2, 1, 3)


def _bmm(a, b):
    """a (B, H, M, K) @ b (B, H, K, N) -> (B, H, M, N). On the CPU one qkv.linear per (B, H): the
    same BLAS as the model's linears (NumPy's matmul would wake a second BLAS's threads, and its
    stacked matmul leaves BLAS for strided operands)."""
    xp = namespace(a)
    if xp is not np:
        return xp.matmul(a, b)
    out = np.empty(a.shape[:-1] + b.shape[-1:], dtype=a.dtype)
    for i in np.ndindex(*a.shape[:-2]):
        qkv.linear(a[i], b[i], out=out[i])
    return out


def pattern(q, k, lse, scale, causal, mask=None, kv_lengths=None):
    """Attention probabilities (B, H, Lq, Lk) from the fused kernel's log-sum-exp: exp(scale q k^T -
    lse) where a key is visible, 0 elsewhere. q (B, H, Lq, d), k (B, H, Lk, d), lse (B, H, Lq).
    Computed in float32 (float64 for float64 inputs), returned in q's dtype."""
    xp = namespace(q)
    acc = np.float64 if q.dtype == np.float64 else np.float32
    Lq, Lk = q.shape[2], k.shape[2]
    s = _bmm(q.astype(acc, copy=False), k.astype(acc, copy=False).transpose(0, 1, 3, 2))  # (B, H, Lq, Lk)
    s *= acc(scale)
    keep = None
    i = xp.arange(Lq)[:, None]
    j = xp.arange(Lk)[None, :]
    kvl = None if kv_lengths is None else kv_lengths.astype(np.int64)[:, None, None, None]  # (B, 1, 1, 1)
    if causal in (True, "bottom_right"):
        keep = j <= i + ((Lk if kvl is None else kvl) - Lq)
    elif causal == "top_left":
        keep = j <= i
    if kvl is not None:
        keep = (j < kvl) if keep is None else keep & (j < kvl)
    if mask is not None:
        if mask.dtype == np.bool_:
            keep = mask if keep is None else keep & mask
        else:
            s += mask.astype(acc, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        p = xp.exp(s - lse.astype(acc, copy=False)[..., None])
    if keep is not None:
        p = xp.where(keep, p, acc(0))
    else:
        p = xp.where(xp.isfinite(s), p, acc(0))  # float-mask -inf keys; rows with no visible key
    return p.astype(q.dtype, copy=False)


def attention(mha, x, hp, mask=None, kv_lengths=None, cache=None, layer=0):
    """MultiHeadAttention (self-attention): x (B, L, C) -> (B, L, C) through hook_q/k/v, hook_pattern,
    hook_z and hook_result."""
    if mha.cross or getattr(mha, "n_kv_head", mha.n_head) != mha.n_head or getattr(mha, "rope", None) is not None:
        raise ValueError("hooks cover multi-head self-attention without rotary positions (GPT, Encoder); this "
                         "MultiHeadAttention is cross-attention, grouped-query or rotary")
    B, L, C = x.shape
    H, d = mha.n_head, mha.head_dim
    xp = namespace(x)
    t = mha.c_attn(x).reshape(B, L, 3, H, d)
    q = hp("hook_q", t[:, :, 0])  # (B, L, H, d)
    k = hp("hook_k", t[:, :, 1])
    v = hp("hook_v", t[:, :, 2])
    qh, kh, vh = _heads(q), _heads(k), _heads(v)  # (B, H, L, d)
    if cache is not None:
        kh, vh = cache.append(layer, kh, vh)  # (B, H, t + L, d)
    causal = mha.causal
    if hp.wants("hook_pattern"):
        z, lse = qkv.attention(qh, kh, vh, causal=causal, mask=mask, kv_lengths=kv_lengths, return_lse=True)
        p = pattern(qh, kh, lse, 1.0 / np.sqrt(d), causal, mask, kv_lengths)
        p, changed = hp.edit("hook_pattern", p)
        if changed:
            z = _bmm(p.astype(vh.dtype, copy=False), vh)  # (B, H, L, d) from the edited pattern
    else:
        z = qkv.attention(qh, kh, vh, causal=causal, mask=mask, kv_lengths=kv_lengths)
    z = hp("hook_z", z.transpose(0, 2, 1, 3))  # (B, L, H, d)
    if hp.wants("hook_result"):
        w_up = mha.c_proj.weight.reshape(H, d, C)  # each head's Wv_up
        r = _bmm(z.transpose(0, 2, 1, 3), xp.broadcast_to(w_up, (B, H, d, C))).transpose(0, 2, 1, 3)  # (B, L, H, C)
        out = edited_result(mha, r, hp)
        if out is not None:
            return out
    return mha.c_proj(z.reshape(B, L, C))


def edited_result(mha, r, hp):
    """hook_result on r (B, L, H, C), each head's share of the output projection: the attention output
    (B, L, C) summed from the edited r plus the projection's bias, or None when no hook changed r."""
    r, changed = hp.edit("hook_result", r)
    if not changed:
        return None
    out = r.sum(axis=2)
    if mha.c_proj.bias is not None:
        out += mha.c_proj.bias
    return out


def _activate(pre, activation):
    if activation is None:
        return pre
    if activation == "relu":
        return namespace(pre).maximum(pre, 0)
    return qkv.gelu(pre, "tanh" if activation == "gelu_tanh" else "none")


def mlp(m, x, hp):
    """MLP: x (B, L, C) -> (B, L, C) through hook_pre and hook_post."""
    fc = m.c_fc
    if hp.wants("hook_pre"):
        post, pre = qkv.linear(x, fc.weight, fc.bias, m.activation, return_preact=True)
        if m.activation is None:
            pre = pre.copy()  # linear returned the same array twice
        pre, changed = hp.edit("hook_pre", pre)
        if changed:
            post = _activate(pre, m.activation)
    else:
        post = fc(x, m.activation)
    return m.c_proj(hp("hook_post", post))


def block(blk, x, hp, mask=None, kv_lengths=None, cache=None, layer=0):
    """Block: x (B, L, C) -> (B, L, C) through every hook point of the block (x is not modified)."""
    x = hp("hook_resid_pre", x)
    kw = dict(mask=mask, kv_lengths=kv_lengths, cache=cache, layer=layer)
    if blk.pre_ln:
        a = hp("hook_attn_out", attention(blk.attn, hp("ln1.hook_normalized", blk.ln_1(x)), hp.child("attn"), **kw))
        if blk.mlp is None:  # attention only
            return hp("hook_resid_post", x + a)
        x = hp("hook_resid_mid", x + a)
        m = hp("hook_mlp_out", mlp(blk.mlp, hp("ln2.hook_normalized", blk.ln_2(x)), hp.child("mlp")))
        return hp("hook_resid_post", x + m)
    a = hp("hook_attn_out", attention(blk.attn, x, hp.child("attn"), **kw))
    h = hp("ln1.hook_normalized", blk.ln_1(hp("hook_resid_mid", a + x)))
    m = hp("hook_mlp_out", mlp(blk.mlp, h, hp.child("mlp")))
    return hp("ln2.hook_normalized", blk.ln_2(hp("hook_resid_post", m + h)))
