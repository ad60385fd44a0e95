"""GPT: a decoder-only transformer (GPT-2 layout), causal, with the LM head tied to the token
embeddings. Loads Hugging Face GPT-2 folders (config.json + model.safetensors) and generates text
with a preallocated KV cache, for prompts of different lengths at once (left-padded: the padding is
masked out of attention and positions count from each row's first token).

Training: init_weights (GPT-2's initialisation, as nanoGPT) and value_and_grad (the loss and every
parameter's gradient, each layer's backward beside its forward in qkv.nn.layers); qkv.optim updates
the parameters. There is no dropout.
"""

import numpy as np

import qkv
from qkv import _backend, _ops
from qkv.nn.config import GPTConfig
from qkv.nn import hooks as _hooks
from qkv.nn.kv_cache import KVCache
from qkv.nn.layers import Block, Embedding, LayerNorm
from qkv.nn.module import Module, Scratch, Tape


_MODEL = object()  # generate's default eos_token_id: the model's own


class GPT(_hooks.HookedModel, Module):
    eos_token_id = None  # id (or list of ids) that ends a generated row; from_pretrained reads the checkpoint's

    def __init__(self, config=None, dtype=np.float32, xp=np):
        self.config = config = config or GPTConfig()
        self.embeddings = Embedding(config.vocab_size, config.block_size, config.n_embd, dtype=dtype, xp=xp)
        self.h = [Block(config.n_embd, config.n_head, config.n_inner, config.layer_norm_epsilon, config.activation,
                        pre_ln=True, causal=True, bias=config.bias, dtype=dtype, xp=xp,
                        attn_only=config.attn_only)
                  for _ in range(config.n_layer)]
        self.ln_f = LayerNorm(config.n_embd, config.layer_norm_epsilon, dtype, xp)

    def init_weights(self, seed=0):
        """GPT-2's initialisation, as nanoGPT does it: every weight matrix and embedding from
        normal(0, 0.02), the residual projections (attn.c_proj, mlp.c_proj) from normal(0, 0.02 /
        sqrt(2 n_layer)), biases 0, layer-norm gains 1. Drawn in float64 on the host from
        numpy.random.default_rng(seed), parameter by parameter in named_parameters order. Returns self."""
        rng = np.random.default_rng(seed)
        xp = self.xp()
        std_proj = 0.02 / np.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                new = np.zeros(p.shape)
            elif ".ln_" in "." + name:  # ln_1, ln_2, ln_f gains
                new = np.ones(p.shape)
            else:
                new = rng.normal(0.0, std_proj if name.endswith("c_proj.weight") else 0.02, size=p.shape)
            p[...] = xp.asarray(new.astype(p.dtype))
        return self

    def value_and_grad(self, ids, targets):
        """The mean cross-entropy of predicting ``targets`` from ``ids``, and its gradient.

        ids, targets: (B, T) integer arrays (on the model's device or the host), T <= block_size;
        a target of -1 is ignored (the mean is over the others; all ignored gives 0). Returns
        ``(loss, grads)``: loss a Python float, grads a dict with exactly the keys and shapes of
        ``dict(model.named_parameters())``, on the model's backend. The tied LM head's gradient is
        added into ``embeddings.wte``.

        The forward keeps what the backward needs (a Tape) in work buffers that the next call with
        the same (B, T) reuses; each layer's backward is its ``backward`` method, writing into
        reused buffers too: after the first call a step allocates no large array (the logits'
        gradient replaces the logits in place). GPT and Llama (pre-norm, causal self-attention; an
        untied LM head's gradient is ``lm_head.weight``'s), no dropout. One call at a time per
        model (the buffers are the model's). The returned gradients are the model's gradient
        buffers: the next call overwrites them (copy what you keep), as the optimizer step that
        follows them does not need.
        """
        xp = self.xp()
        ids, targets = self._check_batch(ids, targets, xp)
        B, T = ids.shape
        wte = self.embeddings.wte
        tape = getattr(self, "_tape", None)
        if tape is None or tape.scratch.xp is not xp or tape.scratch.dtype != wte.dtype:
            tape = self._tape = Tape(Scratch(xp, wte.dtype))
            tape.names = [name for name, _ in self.named_parameters()]
        tape.grads.clear()
        blocks = [tape.child(f"h.{i}", work=f"h.{i % 2}") for i in range(len(self.h))]  # backward: 2 sets by parity

        positions = tape.get("positions")  # 0..T-1: the rotary positions (Llama; GPT's blocks ignore them)
        if positions is None or positions.shape != (T,):
            positions = tape["positions"] = xp.arange(T)
        head = self._head()  # (C, V): wte.T when tied
        tied = getattr(self, "lm_head", None) is None

        # forward: the residual stream of each layer lives in its own buffer, kept for the backward
        x = self.embeddings.forward_train(ids, tape.child("embeddings"))  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block.forward_train(x, blocks[i], out=tape.buf(f"h.{i}.out", x.shape), positions=positions)
        h = self.ln_f.forward_train(x, tape.child("ln_f"), out=tape.buf("ln_f.y", x.shape))
        logits = qkv.linear(h, head, out=tape.buf("logits", (B, T, self.config.vocab_size)))
        loss, dlogits = qkv.cross_entropy(logits, targets, -1, return_grad=True, out=logits)  # in place

        # backward, in reverse
        emb = tape.child("embeddings")
        dh = tape.work("dh", h.shape)
        dhead = emb.grad("wte", wte).T if tied else tape.child("lm_head").grad("weight", head)  # tied: wte's share
        qkv.linear_backward(dlogits, h, head, out=(dh, dhead, None))
        dx = self.ln_f.backward(dh, tape.child("ln_f"))
        for i in reversed(range(len(self.h))):
            dx = self.h[i].backward(dx, blocks[i])
        self.embeddings.backward(dx, emb, tied=tied)  # tied: adds the token rows to the head's share
        grads = {name: tape.grads[name] for name in tape.names}
        tape.grads.clear()
        return float(loss), grads

    def _check_batch(self, ids, targets, xp):
        """ids, targets -> (B, T) int64 arrays on the model's device, checked."""
        host = []
        for name, a in (("ids", ids), ("targets", targets)):
            a = a.get() if _backend.array_kind(a) == "cupy" else np.asarray(a)
            if a.ndim != 2 or a.dtype.kind not in "iu":
                raise ValueError(f"value_and_grad: {name} must be a (B, T) integer array, got {a.dtype} of shape "
                                 f"{a.shape}")
            host.append(a.astype(np.int64, copy=False))
        ids, targets = host
        if ids.shape != targets.shape:
            raise ValueError(f"value_and_grad: ids {ids.shape} and targets {targets.shape} must have the same shape")
        if ids.size == 0:
            raise ValueError(f"value_and_grad: the batch is empty, shape {ids.shape}")
        V, T = self.config.vocab_size, ids.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"value_and_grad: {T} tokens per row exceed the context of {self.config.block_size}")
        if ids.min() < 0 or ids.max() >= V:
            raise ValueError(f"value_and_grad: ids must lie in [0, {V}), got {int(ids.min())}..{int(ids.max())}")
        bad = (targets != -1) & ((targets < 0) | (targets >= V))
        if bad.any():
            raise ValueError(f"value_and_grad: targets must lie in [0, {V}) or be -1 (ignored), got "
                             f"{int(targets[bad][0])}")
        return xp.asarray(ids), xp.asarray(targets)

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

    def _forward(self, ids, cache, last_only, return_attention, scratch, logits_out=None, mask=None,
                 position_ids=None):
        """mask: bool keys to attend (B, 1, 1, Lk), on top of causal (left-padded batches);
        position_ids (B, L): each token's position, default cache.length onwards."""
        B, L = ids.shape
        start = cache.length if cache is not None else 0
        if position_ids is None and start + L > self.config.block_size:
            raise ValueError(f"{start + L} tokens exceed the context of {self.config.block_size}")
        if self._hook_run is not None:  # hooks or a cache are active (qkv.nn.hooks)
            return self._forward_hooked(ids, cache, last_only, return_attention, logits_out, mask, position_ids)
        x = self.embeddings(ids, start=start, position_ids=position_ids)  # (B, L, C), the residual stream
        return self._blocks_and_head(x, cache, last_only, return_attention, scratch, logits_out, mask=mask)

    def _blocks_and_head(self, x, cache, last_only, return_attention, scratch, logits_out, **block_kw):
        """The residual stream x (B, L, C) through every block, ln_f and the LM head (GPT and Llama
        alike); block_kw go to each block (the mask, and Llama's positions). The layers call their ops
        through qkv._ops.forward_kernels, checked here once for the pass: every argument is the model's own."""
        L = x.shape[1]
        ops = _ops.forward_kernels(x)
        trace = {"attention": [], "residual": [x.copy()]} if return_attention else None
        for i, block in enumerate(self.h):
            x = block(x, cache=cache, layer=i, return_weights=return_attention, scratch=scratch, ops=ops, **block_kw)
            if return_attention:
                x, w = x
                trace["attention"].append(w)
                trace["residual"].append(x.copy())
        if cache is not None:
            cache.advance(L)
        if last_only:
            x = x[:, -1:, :]  # only the last position goes through the LM head
        h = self.ln_f(x, out=scratch("ln_f", x.shape), ops=ops)
        logits = ops.linear(h, self._head(), None, None, logits_out)  # (B, L, C) @ (C, V)
        return (logits, trace) if return_attention else logits

    def _head(self):
        return self.embeddings.wte.T  # the tied LM head, (C, V)

    def _forward_hooked(self, ids, cache, last_only, return_attention, logits_out, mask, position_ids):
        """_forward with a hook point at every named activation (qkv.nn.hooks), layer by layer into
        fresh arrays; the same kernels, so the same logits while no hook edits anything."""
        if return_attention:
            raise ValueError("return_attention does not combine with hooks: cache blocks.{i}.attn.hook_pattern "
                             "and blocks.{i}.hook_resid_post with run_with_cache instead")
        hp = _hooks.HookPoints(self._hook_run)
        start = cache.length if cache is not None else 0
        x = _hooks.embed(self.embeddings, ids, hp, start=start, position_ids=position_ids)  # (B, L, C)
        for i, block in enumerate(self.h):
            x = _hooks.block(block, x, hp.child(f"blocks.{i}"), mask=mask, cache=cache, layer=i)
        if cache is not None:
            cache.advance(ids.shape[1])
        if last_only:
            x = x[:, -1:, :]
        h = hp("ln_final.hook_normalized", self.ln_f(x))
        return qkv.linear(h, self.embeddings.wte.T, out=logits_out)  # tied head: (B, L, C) @ (C, V)

    def _hook_names(self):
        names = ["hook_embed", "hook_pos_embed"]
        for i, block in enumerate(self.h):
            names += _hooks.block_names(f"blocks.{i}.", block)
        return names + ["ln_final.hook_normalized"]

    def new_cache(self, batch, max_len):
        c = self.config
        return KVCache(c.n_layer, batch, c.n_head, max_len, c.head_dim, self.embeddings.wte.dtype, self.xp())

    def generate(self, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, *,
                 attention_mask=None, eos_token_id=_MODEL, pad_token_id=None):
        """Continue each prompt by up to ``max_new_tokens`` tokens.

        ids: one prompt (L,) or a batch (B, L) of int ids; prompts of different lengths as a list of
        id lists, or as (B, L) ids left-padded with ``attention_mask`` (B, L) of 0/1 (1 = real token,
        each row 0...0 1...1, as transformers takes it).

        Returns, for a list: a list of id lists, each its prompt followed by its new tokens up to and
        including its eos. For an array: int64 (B, L + n), ids as given then n <= max_new_tokens new
        tokens per row; a row that ended before the others is filled with ``pad_token_id`` (default:
        the eos id).

        Each row gets what it would get alone: padding is masked out of attention at prefill and at
        every decode step, and positions count from each row's first real token (position_ids =
        cumsum(attention_mask) - 1, as transformers does). eos_token_id: an id or a list of ids that
        ends a row (default: the model's, from the checkpoint's generation_config.json or
        config.json; None: rows run to max_new_tokens). Generation stops when every row has ended.

        Sampling (on the host): temperature, then top-k, then top-p; ``top_k=1`` is greedy. Row r
        draws from its own stream, child r of ``numpy.random.SeedSequence(seed)``: the same seed gives
        the same tokens, and a row's tokens depend only on its prompt, its index r and the seed. So
        under sampling row 0 of a batch equals its prompt alone, other rows do not; greedy rows always
        do (both up to float rounding of near-ties: a batch runs GEMMs of other shapes).

        Prefill runs the prompts once into a preallocated KV cache; each new token then costs one
        single-position forward pass. ``generate_stream`` yields the tokens as they are made.
        """
        prompt, n_pad, given, eos, pad = self._setup(ids, max_new_tokens, temperature, top_k, top_p, attention_mask,
                                                     eos_token_id, pad_token_id)
        steps = list(self._decode(prompt, n_pad, max_new_tokens, temperature, top_k, top_p, seed, eos, pad))
        new = np.stack(steps, axis=1) if steps else np.empty((prompt.shape[0], 0), dtype=np.int64)  # (B, n)
        if given is not None:
            return np.concatenate([given, new], axis=1)
        rows = []
        for r, row in enumerate(new):
            ended = np.flatnonzero(np.isin(row, eos))
            n = ended[0] + 1 if ended.size else len(row)
            rows.append(prompt[r, n_pad[r]:].tolist() + row[:n].tolist())
        return rows

    def generate_stream(self, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, *,
                        attention_mask=None, eos_token_id=_MODEL, pad_token_id=None):
        """generate, one step at a time: an iterator of each step's new tokens, int64 (B,), rows in
        the order given (a row that has ended holds pad_token_id; its eos comes once). Arguments as
        generate; they are checked here, before the first step. The first step includes the prefill."""
        prompt, n_pad, _, eos, pad = self._setup(ids, max_new_tokens, temperature, top_k, top_p, attention_mask,
                                                 eos_token_id, pad_token_id)
        return self._decode(prompt, n_pad, max_new_tokens, temperature, top_k, top_p, seed, eos, pad)

    def _setup(self, ids, max_new_tokens, temperature, top_k, top_p, attention_mask, eos_token_id, pad_token_id):
        """Check generate's arguments -> (prompt (B, L) int64 left-padded, n_pad (B,) its padding per
        row, the ids as given (None for a list), eos ids (k,), pad id)."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r} (use top_k=1 for greedy decoding)")
        if top_k is not None and (int(top_k) < 1):
            raise ValueError(f"top_k must be >= 1, got {top_k!r}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        prompt, n_pad, given = self._prompts(ids, attention_mask)
        B, L = prompt.shape
        if L > self.config.block_size:
            raise ValueError(f"the {'longest ' if B > 1 else ''}prompt has {L} tokens but the context is "
                             f"{self.config.block_size}")
        if L + max_new_tokens > self.config.block_size:
            raise ValueError(f"{L} prompt tokens + {max_new_tokens} new ones exceed the context of "
                             f"{self.config.block_size}")
        given_eos = self.eos_token_id if eos_token_id is _MODEL else eos_token_id
        eos = [] if given_eos is None else [given_eos] if np.ndim(given_eos) == 0 else list(given_eos)
        if not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) and 0 <= e < self.config.vocab_size
                   for e in eos):
            raise ValueError(f"eos_token_id must be None, a token id or a list of them in [0, "
                             f"{self.config.vocab_size}), got {given_eos!r}")
        eos = np.array(eos, dtype=np.int64)
        if pad_token_id is None:
            pad_token_id = int(eos[0]) if eos.size else 0
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, (int, np.integer)):
            raise ValueError(f"pad_token_id must be an int, got {pad_token_id!r}")
        return prompt, n_pad, given, eos, int(pad_token_id)

    def _prompts(self, ids, attention_mask):
        """ids (and attention_mask) -> (prompt (B, L) int64 on the host, left-padded to the longest
        row; n_pad (B,) padding columns per row; the ids as given, int64 (B, L0), or None for a list)."""
        if isinstance(ids, (list, tuple)) and ids and all(np.ndim(row) == 1 for row in ids):
            if attention_mask is not None:
                raise ValueError("attention_mask goes with an array of ids; a list of prompts is padded here")
            rows = [np.asarray(row) for row in ids]
            for r, row in enumerate(rows):
                if row.size == 0:
                    raise ValueError(f"ids[{r}] is empty: every prompt needs at least one token")
                if row.dtype.kind not in "iu":
                    raise ValueError(f"ids[{r}] must hold integer token ids, got dtype {row.dtype}")
            L = max(len(row) for row in rows)
            n_pad = np.array([L - len(row) for row in rows], dtype=np.int64)
            prompt = np.zeros((len(rows), L), dtype=np.int64)
            for row, p, n in zip(rows, prompt, n_pad):
                p[n:] = row
            return self._check_ids(prompt).astype(np.int64, copy=False), n_pad, None
        if _backend.array_kind(ids) is None:
            ids = np.asarray(ids)
        host = ids.get() if hasattr(ids, "get") else ids
        host = host[None, :] if host.ndim == 1 else host
        if attention_mask is None:
            given = self._check_ids(host).astype(np.int64)
            return given, np.zeros(given.shape[0], dtype=np.int64), given
        if host.ndim != 2 or host.dtype.kind not in "iu":
            raise ValueError(f"ids must be an integer array (B, L) or (L,), got {host.dtype} of shape {host.shape}")
        mask = attention_mask.get() if _backend.array_kind(attention_mask) == "cupy" else np.asarray(attention_mask)
        mask = mask[None, :] if mask.ndim == 1 else mask
        if mask.shape != host.shape:
            raise ValueError(f"attention_mask must have the shape of ids {host.shape}, got {mask.shape}")
        if mask.dtype.kind not in "biuf" or not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        mask = mask.astype(bool)
        for r in range(mask.shape[0]):
            if not mask[r].any():
                raise ValueError(f"attention_mask row {r} is all 0: every prompt needs at least one token")
            if (mask[r, 1:] < mask[r, :-1]).any():
                raise ValueError(f"attention_mask row {r} is not left padding (0...0 1...1): "
                                 f"{mask[r].astype(int).tolist()}")
        n_pad = (~mask).sum(axis=1)
        first = int(n_pad.min())  # columns that are padding in every row are dropped
        prompt = self._check_ids(np.where(mask, host, 0)[:, first:]).astype(np.int64)  # pad ids are never read
        return prompt, n_pad - first, host.astype(np.int64)

    def _decode(self, prompt, n_pad, max_new_tokens, temperature, top_k, top_p, seed, eos, pad):
        """The generation loop (arguments checked): yields each step's new tokens (B,) int64."""
        B, L = prompt.shape
        V = self.config.vocab_size
        xp = self.xp()
        cache = self.new_cache(B, L + max_new_tokens)
        scratch = Scratch(xp, self.embeddings.wte.dtype)  # one set of work buffers for every step
        keep = positions = None
        if n_pad.any():  # left padding: masked keys at every step, positions from each row's first token
            keep = np.arange(L + max_new_tokens)[None, :] >= n_pad[:, None]  # (B, T)
            keep = xp.asarray(keep)[:, None, None, :]  # (B, 1, 1, T): sliced to the keys cached so far
            positions = np.maximum(np.arange(L)[None, :] - n_pad[:, None], 0)  # (B, L)
        rngs = None if top_k == 1 else [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(B)]
        done = np.zeros(B, dtype=bool)
        step = xp.asarray(prompt)  # the prompts: one prefill pass fills the cache
        for t in range(max_new_tokens):
            mask = None if keep is None else keep[..., :cache.length + step.shape[1]]
            pos = None if positions is None else xp.asarray(positions)
            logits = self._forward(step, cache, True, False, scratch, scratch("logits", (B, 1, V)), mask, pos)
            host = logits[:, -1, :]  # (B, V)
            host = host.get() if hasattr(host, "get") else host
            nxt = sample(host, temperature, top_k, top_p, rngs).astype(np.int64)  # (B,)
            if eos.size:
                nxt[done] = pad
                done |= np.isin(nxt, eos)
            yield nxt.copy()
            if done.all():
                return
            step = xp.asarray((np.where(done, 0, nxt) if done.any() else nxt)[:, None])  # ended rows: any id
            if positions is not None:
                positions = (L + t - n_pad)[:, None]  # (B, 1): the new token's position in its row


def sample(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """Pick one token per row of logits (B, V) on the host: temperature, then top-k, then top-p.

    rng: a numpy Generator, or a list of B of them (one stream per row)."""
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
    rngs = rng if isinstance(rng, (list, tuple)) else [rng or np.random.default_rng()] * len(p)
    return np.array([g.choice(p.shape[-1], p=row) for g, row in zip(rngs, p)])
