"""A GPT / Encoder forward written out by hand in float64 NumPy, with TransformerLens's hook names:
the oracle of tests/test_hooks.py, test_lens.py and test_cuda_gpu_hooks.py. Every activation is
computed from the model's weights with einsum (no qkv op), and ``edits`` {name: fn} apply at the
same points as model.run_with_hooks does (fn(x, name) -> None or a replacement).
"""

import numpy as np
from scipy.special import erf

import qkv.nn


def small_gpt(seed=0, attn_only=False, dtype=np.float32, n_layer=2):
    """A random 2-layer GPT (4 heads of 8, vocabulary 64, context 32) with weights large enough
    that every head matters. attn_only: blocks without MLP (mlp and ln_2 set to None)."""
    cfg = qkv.nn.GPTConfig(vocab_size=64, block_size=32, n_layer=n_layer, n_head=4, n_embd=32)
    model = qkv.nn.GPT(cfg, dtype=dtype)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
            p[...] = 1 + rng.normal(0, 0.1, p.shape)
        else:
            p[...] = rng.normal(0, 0.3, p.shape)
    if attn_only:
        for blk in model.h:
            blk.mlp = blk.ln_2 = None
    return model


def small_encoder(seed=0):
    cfg = qkv.nn.BertConfig(vocab_size=50, max_position_embeddings=32, n_layer=2, n_head=2, n_embd=16, n_inner=32)
    model = qkv.nn.Encoder(cfg)
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p[...] = rng.normal(0, 0.3, p.shape)
    return model


def host(a):
    return np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float64)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * host(w) + host(b)


def activate(x, activation):
    if activation == "gelu_tanh":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    if activation == "gelu":
        return 0.5 * x * (1 + erf(x / np.sqrt(2)))
    return np.maximum(x, 0)


class _Points:
    def __init__(self, edits):
        self.edits, self.acts = edits or {}, {}

    def __call__(self, name, x):
        fn = self.edits.get(name)
        if fn is not None:
            y = fn(x, name)
            x = x if y is None else np.asarray(y, dtype=np.float64)
        self.acts[name] = x
        return x


def _attention(mha, x, hp, p, keep):
    """keep (B, 1, Lq, Lk) bool: visible keys."""
    B, L, C = x.shape
    H, d = mha.n_head, mha.head_dim
    t = x @ host(mha.c_attn.weight) + host(mha.c_attn.bias)
    q = hp(p + "attn.hook_q", t[..., :C].reshape(B, L, H, d).copy())
    k = hp(p + "attn.hook_k", t[..., C:2 * C].reshape(B, L, H, d).copy())
    v = hp(p + "attn.hook_v", t[..., 2 * C:].reshape(B, L, H, d).copy())
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    s = np.where(keep, s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    pat = hp(p + "attn.hook_pattern", e / e.sum(-1, keepdims=True))
    z = hp(p + "attn.hook_z", np.einsum("bhqk,bkhd->bqhd", pat, v))
    result = hp(p + "attn.hook_result", np.einsum("bqhd,hdc->bqhc", z, host(mha.c_proj.weight).reshape(H, d, C)))
    return result.sum(2) + host(mha.c_proj.bias)


def _mlp(m, x, hp, p):
    pre = hp(p + "mlp.hook_pre", x @ host(m.c_fc.weight) + host(m.c_fc.bias))
    post = hp(p + "mlp.hook_post", activate(pre, m.activation))
    return post @ host(m.c_proj.weight) + host(m.c_proj.bias)


def gpt_forward(model, ids, edits=None):
    """(logits (B, L, V), {hook name: activation}) in float64."""
    hp = _Points(edits)
    B, L = ids.shape
    emb = model.embeddings
    pos = np.broadcast_to(host(emb.wpe)[:L], (B, L, emb.wte.shape[1])).copy()
    x = hp("hook_embed", host(emb.wte)[ids]) + hp("hook_pos_embed", pos)
    keep = np.tril(np.ones((L, L), bool))[None, None]
    for i, blk in enumerate(model.h):
        p = f"blocks.{i}."
        x = hp(p + "hook_resid_pre", x)
        h = hp(p + "ln1.hook_normalized", layer_norm(x, blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps))
        a = hp(p + "hook_attn_out", _attention(blk.attn, h, hp, p, keep))
        if blk.mlp is None:
            x = hp(p + "hook_resid_post", x + a)
            continue
        x = hp(p + "hook_resid_mid", x + a)
        h = hp(p + "ln2.hook_normalized", layer_norm(x, blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps))
        m = hp(p + "hook_mlp_out", _mlp(blk.mlp, h, hp, p))
        x = hp(p + "hook_resid_post", x + m)
    h = hp("ln_final.hook_normalized", layer_norm(x, model.ln_f.weight, model.ln_f.bias, model.ln_f.eps))
    return h @ host(emb.wte).T, hp.acts


def encoder_forward(model, ids, attention_mask, edits=None):
    """(last hidden state (B, L, C), {hook name: activation}) in float64; attention_mask (B, L) 0/1."""
    hp = _Points(edits)
    B, L = ids.shape
    emb = model.embeddings
    C = emb.wte.shape[1]
    pos = np.broadcast_to(host(emb.wpe)[:L], (B, L, C)).copy()
    x = (hp("hook_embed", host(emb.wte)[ids]) + hp("hook_pos_embed", pos)
         + hp("hook_token_type_embed", np.broadcast_to(host(emb.wtt)[0], (B, L, C)).copy()))
    x = hp("ln_embed.hook_normalized", layer_norm(x, model.ln_embed.weight, model.ln_embed.bias, model.ln_embed.eps))
    keep = np.asarray(attention_mask, bool)[:, None, None, :]
    for i, blk in enumerate(model.layer):
        p = f"blocks.{i}."
        x = hp(p + "hook_resid_pre", x)
        a = hp(p + "hook_attn_out", _attention(blk.attn, x, hp, p, keep))
        r = hp(p + "hook_resid_mid", x + a)
        h = hp(p + "ln1.hook_normalized", layer_norm(r, blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps))
        m = hp(p + "hook_mlp_out", _mlp(blk.mlp, h, hp, p))
        r = hp(p + "hook_resid_post", h + m)
        x = hp(p + "ln2.hook_normalized", layer_norm(r, blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps))
    return x, hp.acts
