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
prompts, left padding, sampling and eos handling, one decode loop) and __call__. It overrides the
forward, the cache and loading. Parameter names follow GPT's (h.{i}.attn.c_attn, ...); the LM head
is the token embedding matrix when the checkpoint ties them, else lm_head (C, V).

Shapes: B batch, L sequence, C = n_embd, H query heads, Hkv key/value heads, d head dim, V vocab.
"""

import numpy as np

import qkv
from qkv.nn.config import LlamaConfig
from qkv.nn.gpt import GPT
from qkv.nn.kv_cache import KVCache
from qkv.nn.layers import Block, Linear, RMSNorm
from qkv.nn.module import Module


class TokenEmbedding(Module):
    """Token embeddings alone, (B, L) ids -> (B, L, C): positions enter as rotations in attention."""

    def __init__(self, vocab_size, n_embd, dtype=np.float32, xp=np):
        self.wte = xp.zeros((vocab_size, n_embd), dtype=dtype)  # (V, C)

    def __call__(self, ids):
        return self.wte[ids]  # (B, L, C), a fresh array


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
        raise NotImplementedError("value_and_grad: training covers GPT; Llama runs inference only")

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
        if getattr(self, "_hook_run", None) is not None:
            raise NotImplementedError("hook points (run_with_cache, run_with_hooks) cover GPT and Encoder; Llama "
                                      "has none yet")
        xp = self.xp()
        positions = xp.arange(start, start + L) if position_ids is None else position_ids  # (L,) or (B, L)
        x = self.embeddings(ids)  # (B, L, C), the residual stream
        trace = {"attention": [], "residual": [x.copy()]} if return_attention else None
        for i, block in enumerate(self.h):
            x = block(x, mask=mask, cache=cache, layer=i, return_weights=return_attention, scratch=scratch,
                      positions=positions)
            if return_attention:
                x, w = x
                trace["attention"].append(w)
                trace["residual"].append(x.copy())
        if cache is not None:
            cache.advance(L)
        if last_only:
            x = x[:, -1:, :]  # only the last position goes through the LM head
        h = self.ln_f(x, out=scratch("ln_f", x.shape))
        head = self.embeddings.wte.T if self.lm_head is None else self.lm_head.weight  # (C, V)
        logits = qkv.linear(h, head, out=logits_out)
        return (logits, trace) if return_attention else logits

    def new_cache(self, batch, max_len):
        """A KV cache of n_kv_head heads (grouped-query: n_head / n_kv_head times smaller than MHA's)."""
        c = self.config
        return KVCache(c.n_layer, batch, c.n_kv_head, max_len, c.head_dim, self.embeddings.wte.dtype, self.xp())
