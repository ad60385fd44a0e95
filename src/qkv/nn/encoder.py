"""Encoder: a BERT-style encoder (token + position + token-type embeddings, post-LN blocks, erf
GELU, padding mask from attention_mask) and sentence embeddings with the sentence-transformers
recipe (mean pooling over real tokens, L2 normalisation)."""

import numpy as np

import qkv
from qkv import _backend
from qkv.nn import hooks as _hooks
from qkv.nn.config import BertConfig
from qkv.nn.layers import Block, Embedding, LayerNorm
from qkv.nn.module import Module, Scratch


class Encoder(_hooks.HookedModel, Module):
    def __init__(self, config=None, dtype=np.float32, xp=np):
        self.config = config = config or BertConfig()
        self.embeddings = Embedding(config.vocab_size, config.max_position_embeddings, config.n_embd,
                                    n_types=config.type_vocab_size, dtype=dtype, xp=xp)
        self.ln_embed = LayerNorm(config.n_embd, config.layer_norm_epsilon, dtype, xp)
        self.layer = [Block(config.n_embd, config.n_head, config.n_inner, config.layer_norm_epsilon, config.activation,
                            pre_ln=False, causal=False, dtype=dtype, xp=xp)
                      for _ in range(config.n_layer)]
        self.tokenizer = None
        self.max_seq_length = config.max_position_embeddings

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32):
        """Read a BERT-family folder (config.json, model.safetensors, tokenizer.json), e.g. all-MiniLM-L6-v2."""
        from qkv.io.checkpoint import load_bert

        return load_bert(cls, path, dtype)

    def __call__(self, ids, attention_mask=None, token_type_ids=None, *, return_attention=False):
        """ids (B, L) -> last hidden state (B, L, C). attention_mask (B, L): 1 = token, 0 = padding."""
        xp = self.xp()
        if _backend.array_kind(ids) is None:
            ids = xp.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.shape[1] == 0:
            raise ValueError(f"ids must be a non-empty integer array (B, L), got {ids.dtype} of shape {ids.shape}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got {int(ids.min())}..{int(ids.max())}")
        B, L = ids.shape
        mask = kv_lengths = None
        if attention_mask is not None:
            am = xp.asarray(attention_mask).astype(bool)
            if am.shape != (B, L):
                raise ValueError(f"attention_mask must have shape {(B, L)} like ids, got {am.shape}")
            lengths = am.sum(axis=1)
            if bool((am == (xp.arange(L)[None, :] < lengths[:, None])).all()):
                kv_lengths = lengths.astype(np.int64)  # right padding: whole key tiles are skipped
            else:
                mask = am[:, None, None, :]  # (B, 1, 1, L): True = attend
        if token_type_ids is not None:
            token_type_ids = xp.asarray(token_type_ids)
            if token_type_ids.shape != (B, L) or token_type_ids.dtype.kind not in "iu":
                raise ValueError(f"token_type_ids must be an integer array of shape {(B, L)} like ids, "
                                 f"got {token_type_ids.dtype} of shape {token_type_ids.shape}")
            if int(token_type_ids.min()) < 0 or int(token_type_ids.max()) >= self.config.type_vocab_size:
                raise ValueError(f"token_type_ids must lie in [0, {self.config.type_vocab_size})")
        if self._hook_run is not None:  # hooks or a cache are active (qkv.nn.hooks)
            return self._forward_hooked(ids, mask, kv_lengths, token_type_ids, return_attention)
        x = self.ln_embed(self.embeddings(ids, token_type_ids=token_type_ids))  # (B, L, C), updated in place below
        scratch = Scratch(xp, x.dtype)
        trace = {"attention": [], "residual": [x.copy()]} if return_attention else None
        for block in self.layer:
            x = block(x, mask=mask, kv_lengths=kv_lengths, return_weights=return_attention, scratch=scratch)
            if return_attention:
                x, w = x
                trace["attention"].append(w)
                trace["residual"].append(x.copy())
        return (x, trace) if return_attention else x

    def _forward_hooked(self, ids, mask, kv_lengths, token_type_ids, return_attention):
        """__call__ with a hook point at every named activation (qkv.nn.hooks), into fresh arrays."""
        if return_attention:
            raise ValueError("return_attention does not combine with hooks: cache blocks.{i}.attn.hook_pattern "
                             "and blocks.{i}.ln2.hook_normalized with run_with_cache instead")
        hp = _hooks.HookPoints(self._hook_run)
        x = _hooks.embed(self.embeddings, ids, hp, token_type_ids=token_type_ids)
        x = hp("ln_embed.hook_normalized", self.ln_embed(x))  # (B, L, C)
        for i, block in enumerate(self.layer):
            x = _hooks.block(block, x, hp.child(f"blocks.{i}"), mask=mask, kv_lengths=kv_lengths)
        return x

    def _hook_names(self):
        names = ["hook_embed", "hook_pos_embed", "hook_token_type_embed", "ln_embed.hook_normalized"]
        for i, block in enumerate(self.layer):
            names += _hooks.block_names(f"blocks.{i}.", block)
        return names

    def embed(self, texts, batch_size=32, normalize=True):
        """Sentence embeddings (N, C): mean of the last hidden state over real tokens, L2-normalised.

        Sentences are sorted by length and each batch is padded to its longest sentence only.
        """
        if self.tokenizer is None:
            raise ValueError("embed needs a tokenizer: load the model with Encoder.from_pretrained(folder)")
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts or any(not isinstance(t, str) for t in texts):
            raise ValueError("embed: texts must be a non-empty list of strings")
        enc = self.tokenizer.encode_batch(texts)
        order = np.argsort([-len(e.ids) for e in enc], kind="stable")
        out = np.empty((len(texts), self.config.n_embd), dtype=np.float32)
        for s in range(0, len(texts), batch_size):
            idx = order[s:s + batch_size]
            L = max(len(enc[i].ids) for i in idx)
            ids = np.zeros((len(idx), L), dtype=np.int64)
            am = np.zeros((len(idx), L), dtype=np.int64)
            tt = np.zeros((len(idx), L), dtype=np.int64)
            for r, i in enumerate(idx):
                n = len(enc[i].ids)
                ids[r, :n], am[r, :n], tt[r, :n] = enc[i].ids, 1, enc[i].type_ids
            xp = self.xp()
            h = self(xp.asarray(ids), xp.asarray(am), xp.asarray(tt))  # (b, L, C)
            h = h.get() if hasattr(h, "get") else h
            m = am[:, :, None].astype(np.float32)
            pooled = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            if normalize:
                pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out[idx] = pooled
        return out

    def embed_corpus(self, texts, out, batch_size=32, **options):
        """Embed a corpus into the folder `out` (streaming, resumable; see qkv.corpus): `texts` is an
        iterable of strings (kept in out/input.jsonl) or a pathlib.Path to a text or JSON Lines file
        (options: field, skip_empty, errors, chunk_rows, overwrite). Returns out/embeddings.npy as a
        read-only memory map (N, C): row i = item i, L2-normalised."""
        import os

        from qkv import corpus

        if isinstance(texts, (str, bytes)):
            raise TypeError("embed_corpus: texts must be an iterable of strings or a pathlib.Path to a file, "
                            "not a single str (use embed for a few texts)")
        if not isinstance(texts, os.PathLike):
            texts = corpus.spill(texts, out, overwrite=options.get("overwrite", False))
            options = dict(options, field="text")
        corpus.embed_corpus(self, texts, out, batch_size=batch_size, **options)
        return np.load(os.path.join(out, "embeddings.npy"), mmap_mode="r")
