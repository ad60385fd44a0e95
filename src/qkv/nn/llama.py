"""Llama: the decoder layout of Llama 2/3, Mistral, Qwen2, SmolLM and TinyLlama, built from the
same pieces as GPT (qkv.nn.layers). Four things differ from GPT-2, each an option of those pieces:

- RMSNorm before attention and MLP (Block(norm="rms"), qkv.rms_norm), no biases;
- rotary positions on q and k instead of learned position embeddings (MultiHeadAttention(rope=...),
  qkv.rope, Hugging Face's rotate-half convention, Llama 3's rope_scaling), so the embedding is
  the token table alone and every forward passes each token's position;
- grouped-query attention: n_kv_head < n_head key/value heads, read by qkv.attention directly, and
  a KV cache of n_kv_head heads;
- a SwiGLU MLP: c_fc holds [gate | up] (C, 2 n_inner), silu(gate) * up in the GEMM epilogue
  (qkv.linear(..., activation="swiglu")), then c_proj (n_inner, C).

Llama subclasses GPT for what does not depend on the layout: generate / generate_stream (the
prompts, left padding, sampling and eos handling, one decode loop), __call__ and value_and_grad
(training: each layer's forward_train / backward in qkv.nn.layers). It overrides the forward, the
cache and loading. Parameter names follow GPT's (h.{i}.attn.c_attn, ...); the LM head
is the token embedding matrix when the checkpoint ties them, else lm_head (C, V).

Hook points (run_with_cache, run_with_hooks, hooks(); qkv.nn.hooks) carry TransformerLens's names
for its Llama models; per block, in forward order (shapes as above):

    hook_resid_pre, ln1.hook_normalized                     (B, L, C)
    attn.hook_q (B, L, H, d), attn.hook_k, attn.hook_v      (B, L, Hkv, d), before the rotation
    attn.hook_rot_q, attn.hook_rot_k                        q and k after the rotary positions
    attn.hook_pattern (B, H, Lq, Lk), attn.hook_z (B, L, H, d), attn.hook_result (B, L, H, C)
    hook_attn_out, hook_resid_mid, ln2.hook_normalized      (B, L, C)
    mlp.hook_pre (gate), mlp.hook_pre_linear (up), mlp.hook_post (silu(gate) * up)   (B, L, n_inner)
    hook_mlp_out, hook_resid_post                           (B, L, C)

plus hook_embed before the blocks and ln_final.hook_normalized after them. An edit to hook_pattern
recomputes z from it, to hook_result the attention output from the results (plus any bias), to
mlp.hook_pre or hook_pre_linear the SwiGLU product. With no hook active the forward is the fused one.

Shapes: B batch, L sequence, C = n_embd, H query heads, Hkv key/value heads, d head dim, V vocab.
"""

import numpy as np

import qkv
from qkv.nn import hooks as _hooks
from qkv.nn.config import LlamaConfig
from qkv.nn.gpt import GPT
from qkv.nn.kv_cache import KVCache
from qkv.nn.layers import Block, Linear, RMSNorm, _gather, token_rows_backward
from qkv.nn.module import Module, namespace


class TokenEmbedding(Module):
    """Token embeddings alone, (B, L) ids -> (B, L, C): positions enter as rotations in attention."""

    def __init__(self, vocab_size, n_embd, dtype=np.float32, xp=np):
        self.wte = xp.zeros((vocab_size, n_embd), dtype=dtype)  # (V, C)

    def __call__(self, ids):
        return self.wte[ids]  # (B, L, C), a fresh array

    def forward_train(self, ids, tape):
        """wte[ids] into a tape buffer (B, L, C)."""
        x = tape.buf("x", ids.shape + self.wte.shape[1:])
        _gather(self.wte, ids, x)
        tape["ids"] = ids
        return x

    def backward(self, dx, tape, tied=False):
        """dx (B, L, C) -> d wte in the tape's gradient buffer (added to the tied head's share)."""
        token_rows_backward(self.wte, dx, tape["ids"], tape, tied)


class Llama(GPT):
    eos_token_id = None  # id (or list of ids) that ends a generated row; from_pretrained reads the checkpoint's

    def __init__(self, config=None, dtype=np.float32, xp=np):
        self.config = config = config or LlamaConfig()
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"Llama takes a LlamaConfig, got {type(config).__name__}")
        C = config.n_embd
        rope = {"theta": config.rope_theta, "scaling": config.rope_scaling}
        self.embeddings = TokenEmbedding(config.vocab_size, C, dtype, xp)
        self.h = [Block(C, config.n_head, config.n_inner, config.rms_norm_eps, "swiglu", pre_ln=True, causal=True,
                        bias=config.mlp_bias, dtype=dtype, xp=xp, norm="rms", n_kv_head=config.n_kv_head,
                        head_dim=config.head_dim, rope=rope, attn_bias=config.qkv_bias, proj_bias=config.proj_bias)
                  for _ in range(config.n_layer)]
        self.ln_f = RMSNorm(C, config.rms_norm_eps, dtype, xp)
        self.lm_head = None if config.tie_word_embeddings else Linear(C, config.vocab_size, False, dtype, xp)

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32):
        """Read a Hugging Face folder of model_type llama, qwen2 or mistral: config.json and
        model.safetensors or shards listed in model.safetensors.index.json (never pickle)."""
        from qkv.io.checkpoint import load_llama

        return load_llama(cls, path, dtype)

    def value_and_grad(self, ids, targets):
        """GPT.value_and_grad for this layout: the mean cross-entropy over the targets that are not -1
        and the gradient of every parameter (the tied head's in ``embeddings.wte``, an untied one in
        ``lm_head.weight``), through each layer's backward in qkv.nn.layers (RMSNorm, rotary
        positions, grouped-query attention, SwiGLU), in work buffers reused from step to step."""
        window = self.config.sliding_window
        T = np.shape(ids)[-1] if np.ndim(ids) else 0
        if window is not None and T > window:
            raise ValueError(f"value_and_grad: {T} tokens per row exceed the attention window of {window} "
                             "(sliding-window attention is not implemented)")
        return super().value_and_grad(ids, targets)

    def _forward(self, ids, cache, last_only, return_attention, scratch, logits_out=None, mask=None,
                 position_ids=None):
        """GPT._forward for this layout: mask (B, 1, 1, Lk) bool keys to attend on top of causal;
        position_ids (B, L) each token's rotary position, default cache.length onwards."""
        B, L = ids.shape
        start = cache.length if cache is not None else 0
        if start + L > self.config.block_size:
            raise ValueError(f"{start + L} tokens exceed the context of {self.config.block_size}")
        window = self.config.sliding_window
        if window is not None and start + L > window:
            raise ValueError(f"{start + L} tokens exceed the attention window of {window} (sliding-window "
                             "attention is not implemented)")
        xp = self.xp()
        positions = xp.arange(start, start + L) if position_ids is None else position_ids  # (L,) or (B, L)
        if self._hook_run is not None:  # hooks or a cache are active (qkv.nn.hooks)
            return self._forward_hooked(ids, cache, last_only, return_attention, logits_out, mask, positions)
        x = self.embeddings(ids)  # (B, L, C), the residual stream
        return self._blocks_and_head(x, cache, last_only, return_attention, scratch, logits_out, mask=mask,
                                     positions=positions)

    def _head(self):
        return self.embeddings.wte.T if self.lm_head is None else self.lm_head.weight  # (C, V)

    def _forward_hooked(self, ids, cache, last_only, return_attention, logits_out, mask, positions):
        """_forward with a hook point at every named activation (qkv.nn.hooks' machinery and
        TransformerLens's Llama names), layer by layer into fresh arrays, on the same kernels."""
        if return_attention:
            raise ValueError("return_attention does not combine with hooks: cache blocks.{i}.attn.hook_pattern "
                             "and blocks.{i}.hook_resid_post with run_with_cache instead")
        hp = _hooks.HookPoints(self._hook_run)
        x = hp("hook_embed", self.embeddings(ids))  # (B, L, C)
        for i, block in enumerate(self.h):
            x = _hooked_block(block, x, hp.child(f"blocks.{i}"), mask, cache, i, positions)
        if cache is not None:
            cache.advance(ids.shape[1])
        if last_only:
            x = x[:, -1:, :]
        h = hp("ln_final.hook_normalized", self.ln_f(x))
        return qkv.linear(h, self._head(), out=logits_out)

    def _hook_names(self):
        return (["hook_embed"] + [f"blocks.{i}.{n}" for i in range(len(self.h)) for n in BLOCK_HOOKS]
                + ["ln_final.hook_normalized"])

    def new_cache(self, batch, max_len):
        """A KV cache of n_kv_head heads (grouped-query: n_head / n_kv_head times smaller than MHA's)."""
        c = self.config
        return KVCache(c.n_layer, batch, c.n_kv_head, max_len, c.head_dim, self.embeddings.wte.dtype, self.xp())


# ---------------------------------------------------------------------------------------------
# the hooked forward of a block: the same ops as Block.__call__ with this layout, into fresh arrays

BLOCK_HOOKS = ("hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
               "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_pattern", "attn.hook_z", "attn.hook_result",
               "hook_attn_out", "hook_resid_mid", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_pre_linear",
               "mlp.hook_post", "hook_mlp_out", "hook_resid_post")


def _hooked_block(blk, x, hp, mask, cache, layer, positions):
    """Pre-RMSNorm block x (B, L, C) -> (B, L, C) through its hook points (x is not modified)."""
    x = hp("hook_resid_pre", x)
    a = _hooked_attention(blk.attn, hp("ln1.hook_normalized", blk.ln_1(x)), hp.child("attn"), mask, cache, layer,
                          positions)
    x = hp("hook_resid_mid", x + hp("hook_attn_out", a))
    m = _hooked_mlp(blk.mlp, hp("ln2.hook_normalized", blk.ln_2(x)), hp.child("mlp"))
    return hp("hook_resid_post", x + hp("hook_mlp_out", m))


def _hooked_attention(mha, x, hp, mask, cache, layer, positions):
    """Grouped-query self-attention with rotary positions: x (B, L, C) -> (B, L, C)."""
    B, L, C = x.shape
    H, Hkv, d = mha.n_head, mha.n_kv_head, mha.head_dim
    xp = namespace(x)
    t = mha.c_attn(x).reshape(B, L, H + 2 * Hkv, d)
    q = hp("hook_q", t[:, :, :H])  # (B, L, H, d)
    k = hp("hook_k", t[:, :, H:H + Hkv])  # (B, L, Hkv, d)
    v = hp("hook_v", t[:, :, H + Hkv:])
    if mha.rope is not None:
        theta, scaling = mha.rope["theta"], mha.rope["scaling"]
        q = qkv.rope(q, positions, theta=theta, scaling=scaling)
        k = qkv.rope(k, positions, theta=theta, scaling=scaling)
    q, k = hp("hook_rot_q", q), hp("hook_rot_k", k)
    qh, kh, vh = _hooks._heads(q), _hooks._heads(k), _hooks._heads(v)  # (B, heads, L, d)
    if cache is not None:
        kh, vh = cache.append(layer, kh, vh)  # (B, Hkv, t + L, d)
    if hp.wants("hook_pattern"):
        z, lse = qkv.attention(qh, kh, vh, causal=True, mask=mask, return_lse=True)
        group = H // Hkv  # query heads per K/V head: repeat the K/V heads to H for the (materialised) pattern
        p = _hooks.pattern(qh, xp.repeat(kh, group, axis=1), lse, 1.0 / np.sqrt(d), True, mask)
        p, changed = hp.edit("hook_pattern", p)
        if changed:
            z = xp.matmul(p.astype(vh.dtype, copy=False), xp.repeat(vh, group, axis=1))  # (B, H, L, d)
    else:
        z = qkv.attention(qh, kh, vh, causal=True, mask=mask)
    z = hp("hook_z", z.transpose(0, 2, 1, 3))  # (B, L, H, d)
    if hp.wants("hook_result"):
        r = xp.matmul(z[:, :, :, None, :], mha.c_proj.weight.reshape(H, d, C))[:, :, :, 0]  # (B, L, H, C)
        out = _hooks.edited_result(mha, r, hp)
        if out is not None:
            return out
    return mha.c_proj(z.reshape(B, L, H * d))


def _hooked_mlp(m, x, hp):
    """SwiGLU MLP x (B, L, C) -> (B, L, C) through hook_pre (gate), hook_pre_linear (up), hook_post."""
    fc = m.c_fc
    if hp.wants("hook_pre") or hp.wants("hook_pre_linear"):
        h = qkv.linear(x, fc.weight, fc.bias)  # (B, L, 2 n_inner): [gate | up]
        n = h.shape[-1] // 2
        post = qkv.swiglu(hp("hook_pre", h[..., :n].copy()), hp("hook_pre_linear", h[..., n:].copy()))
    else:
        post = fc(x, "swiglu")
    return m.c_proj(hp("hook_post", post))
