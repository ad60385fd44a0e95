"""GPT: a decoder-only transformer (GPT-2 layout), causal, with the LM head tied to the token
embeddings. Loads Hugging Face GPT-2 folders (config.json + model.safetensors) and generates text
with a preallocated KV cache.
"""

import numpy as np

import qkv
from qkv import _backend
from qkv.nn.config import GPTConfig
from qkv.nn.kv_cache import KVCache
from qkv.nn.layers import Block, Embedding, LayerNorm
from qkv.nn.module import Module, Scratch


class GPT(Module):
    def __init__(self, config=None, dtype=np.float32, xp=np):
        self.config = config = config or GPTConfig()
        self.embeddings = Embedding(config.vocab_size, config.block_size, config.n_embd, dtype=dtype, xp=xp)
        self.h = [Block(config.n_embd, config.n_head, config.n_inner, config.layer_norm_epsilon, config.activation,
                        pre_ln=True, causal=True, bias=config.bias, dtype=dtype, xp=xp)
                  for _ in range(config.n_layer)]
        self.ln_f = LayerNorm(config.n_embd, config.layer_norm_epsilon, dtype, xp)

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32):
        """Read a Hugging Face GPT-2 folder: config.json + model.safetensors (never pickle)."""
        from qkv.io.checkpoint import load_gpt2

        return load_gpt2(cls, path, dtype)

    def _check_ids(self, ids):
        if _backend.array_kind(ids) is None:
            ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"ids must be an integer array (B, L) or (L,), got {ids.dtype} of shape {ids.shape}")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got {int(ids.min())}..{int(ids.max())}")
        if ids.shape[1] == 0:
            raise ValueError("ids is empty: need at least one token")
        return ids

    def __call__(self, ids, *, cache=None, last_only=False, return_attention=False):
        """ids (B, L) -> logits (B, L, vocab) (or (B, 1, vocab) with last_only).

        cache: a KVCache (see new_cache); the tokens are taken to follow the ones already cached.
        With return_attention=True also returns a trace: {"attention": per layer (B, H, L, Lk),
        "residual": the residual stream after the embeddings and after each block (B, L, C)}.
        """
        ids = self._check_ids(ids)
        scratch = Scratch(self.xp(), self.embeddings.wte.dtype)
        return self._forward(ids, cache, last_only, return_attention, scratch)

    def _forward(self, ids, cache, last_only, return_attention, scratch, logits_out=None):
        B, L = ids.shape
        start = cache.length if cache is not None else 0
        if start + L > self.config.block_size:
            raise ValueError(f"{start + L} tokens exceed the context of {self.config.block_size}")
        x = self.embeddings(ids, start=start)  # (B, L, C), the residual stream: updated in place below
        trace = {"attention": [], "residual": [x.copy()]} if return_attention else None
        for i, block in enumerate(self.h):
            x = block(x, cache=cache, layer=i, return_weights=return_attention, scratch=scratch)
            if return_attention:
                x, w = x
                trace["attention"].append(w)
                trace["residual"].append(x.copy())
        if cache is not None:
            cache.advance(L)
        if last_only:
            x = x[:, -1:, :]  # only the last position goes through the LM head
        h = self.ln_f(x, out=scratch("ln_f", x.shape))
        logits = qkv.linear(h, self.embeddings.wte.T, out=logits_out)  # tied head: (B, L, C) @ (C, V)
        return (logits, trace) if return_attention else logits

    def new_cache(self, batch, max_len):
        c = self.config
        return KVCache(c.n_layer, batch, c.n_head, max_len, c.head_dim, self.embeddings.wte.dtype, self.xp())

    def generate(self, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None):
        """Append ``max_new_tokens`` sampled tokens to ``ids`` (B, L) and return (B, L + n).

        Prefill runs the prompt once into a preallocated KV cache; each new token then costs one
        single-position forward pass. ``top_k=1`` is greedy decoding. Sampling happens on the host
        with ``numpy.random.default_rng(seed)``.
        """
        ids = self._check_ids(ids)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r} (use top_k=1 for greedy decoding)")
        if top_k is not None and (int(top_k) < 1):
            raise ValueError(f"top_k must be >= 1, got {top_k!r}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        B, L = ids.shape
        if L > self.config.block_size:
            raise ValueError(f"the prompt has {L} tokens but the context is {self.config.block_size}")
        if L + max_new_tokens > self.config.block_size:
            raise ValueError(f"{L} prompt tokens + {max_new_tokens} new ones exceed the context of "
                             f"{self.config.block_size}")
        xp = self.xp()
        rng = np.random.default_rng(seed)
        cache = self.new_cache(B, L + max_new_tokens)
        scratch = Scratch(xp, self.embeddings.wte.dtype)  # one set of work buffers for every step
        out = np.empty((B, L + max_new_tokens), dtype=np.int64)
        out[:, :L] = ids.get() if hasattr(ids, "get") else ids
        step = xp.asarray(out[:, :L])  # the prompt: one prefill pass fills the cache
        for t in range(max_new_tokens):
            logits = self._forward(step, cache, True, False, scratch, scratch("logits", (B, 1, self.config.vocab_size)))
            host = logits[:, -1, :]  # (B, V)
            host = host.get() if hasattr(host, "get") else host
            nxt = sample(host, temperature, top_k, top_p, rng)  # (B,)
            out[:, L + t] = nxt
            step = xp.asarray(nxt[:, None])  # then one position per step, attending to the cache
        return out


def sample(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """Pick one token per row of logits (B, V) on the host: temperature, then top-k, then top-p."""
    if top_k == 1:
        return np.argmax(logits, axis=-1)
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1:
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, axis=-1)
        keep_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p < top_p  # smallest set reaching top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    rng = rng or np.random.default_rng()
    return np.array([rng.choice(p.shape[-1], p=row) for row in p])
