"""End-to-end model workloads: GPT-2 small forward and per-token decode, MiniLM sentence embedding.

Random weights (nothing is downloaded): speed does not depend on the values. Sizes:
    GPT-2 small   12 layers, 12 heads, 768 wide, vocab 50257, context 1024 (124M parameters)
    MiniLM-L6     6 layers, 12 heads, 384 wide, MLP 1536, vocab 30522 (all-MiniLM-L6-v2's shape)
torch's baselines are transformers' GPT2LMHeadModel and BertModel in eval mode under no_grad.

- ``GPT2Forward``: logits for one sequence of L tokens, (1, L) -> (1, L, 50257). The NumPy
  reference runs L = 128 only (longer with QKV_BENCH_XL=1: tens of seconds a call).
- ``GPT2Decode``: one new token through the model against a KV cache holding ``context`` tokens,
  (1, 1) -> (1, 1, 50257); the cache is cut back to ``context`` after each step, so every timed
  call does the same work.
- ``MiniLMEmbed``: 32 sentences of 8..40 tokens, padded to the longest, mean-pooled and
  L2-normalised (the sentence-transformers recipe).
The sizes live in GPT2_SMALL / MINILM so the tests can swap in tiny ones.
"""

import inspect

import numpy as np

import qkv

from .common import IMPLS, Benchmark, Impl, require_xl, skip, token_ids

GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024)
MINILM = dict(n_layer=6, n_head=12, n_embd=384, n_inner=1536, vocab_size=30522, max_position=512)
EMBED_BATCH, EMBED_LENGTHS = 32, (8, 40)


def _nn(*names):
    """Classes from qkv.nn, or skip when this version of qkv does not have them yet."""
    try:
        import qkv.nn as nn
    except ImportError:
        skip("qkv.nn is not in this version of qkv")
    missing = [n for n in names if not hasattr(nn, n)]
    if missing:
        skip(f"qkv.nn has no {', '.join(missing)} in this version")
    return [getattr(nn, n) for n in names]


def _randomize(model, seed=0):
    """Deterministic GPT-2-style weights in place: N(0, 0.02) everywhere, layer-norm gains 1 + N(0, 0.02).

    Speed does not depend on the values, but all-zero weights would make the oracle check trivial.
    """
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        noise = rng.standard_normal(p.shape, dtype=np.float32) * 0.02
        gain = p.ndim == 1 and name.endswith("weight")  # a LayerNorm's weight (Linear weights are 2-D)
        p[...] = (1.0 + noise) if gain else noise
    return model


def _move(model, impl):
    if impl.name == "cuda":
        model.to("cuda")
    return model


def _oracle(self, kind):
    """The same model and inputs on the NumPy reference backend (qkv's cpu backend only).

    torch's models have their own weights; qkv's against transformers' is tests/test_models.py's job.
    """
    if self.impl.name != "cpu":
        raise NotImplementedError("the oracle re-runs qkv's model on NumPy arrays")
    with qkv.use_backend("numpy"):
        return self.run(kind)


# ---------------------------------------------------------------------------------------------
# GPT-2


def _qkv_gpt(impl):
    GPT, GPTConfig = _nn("GPT", "GPTConfig")
    s = GPT2_SMALL
    cfg = GPTConfig(n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"], vocab_size=s["vocab_size"],
                    block_size=s["block_size"])
    return _move(_randomize(GPT(cfg, dtype=impl.dtype)), impl)


def _torch_gpt(impl):
    try:
        import transformers
    except ImportError:
        skip("transformers is not installed")
    s = GPT2_SMALL
    cfg = transformers.GPT2Config(n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"],
                                  vocab_size=s["vocab_size"], n_positions=s["block_size"])
    impl.ops.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).to(impl.tdtype).eval()


class _GPT2Case(Benchmark):
    KINDS = ("gpt2_forward", "gpt2_decode")

    def make_model(self, dtype, backend):
        self.impl = impl = Impl(backend, dtype)
        self.model = _torch_gpt(impl) if impl.is_torch else _qkv_gpt(impl)

    def run(self, kind):
        impl = self.impl
        if kind == "gpt2_forward":
            if impl.is_torch:
                with impl.ops.no_grad():
                    return self.model(self.ids).logits
            return self.model(self.ids)
        if kind == "gpt2_decode":
            if impl.is_torch:
                with impl.ops.no_grad():
                    logits = self.model(self.next_id, use_cache=True, **{self.cache_kw: self.cache}).logits
                self.cache.crop(-1)  # drop the token just added
                return logits
            logits = self.model(self.next_id, cache=self.cache)
            self.cache.length = self.context  # forget the token just added (the buffer is preallocated)
            return logits
        raise ValueError(kind)

    expected = _oracle


class GPT2Forward(_GPT2Case):
    params = [[128, 512, 1024], ["float32"], IMPLS]
    param_names = ["L", "dtype", "backend"]

    def setup(self, L, dtype, backend):
        require_xl(backend == "numpy" and L > 128, "GPT-2 small on the NumPy reference at L > 128 (tens of seconds a call)")
        self.make_model(dtype, backend)
        ids = token_ids((1, L), GPT2_SMALL["vocab_size"])
        self.ids = self.impl.ops.from_numpy(ids) if self.impl.is_torch else self.impl.xp.asarray(ids)
        self.run("gpt2_forward")  # warm-up
        self.impl.sync()

    def time_gpt2_forward(self, L, dtype, backend):
        self.run("gpt2_forward")
        self.impl.sync()


class GPT2Decode(_GPT2Case):
    params = [[32, 512], ["float32"], IMPLS]
    param_names = ["context", "dtype", "backend"]

    def setup(self, context, dtype, backend):
        self.make_model(dtype, backend)
        impl, self.context = self.impl, context
        prompt = token_ids((1, context), GPT2_SMALL["vocab_size"])
        nxt = token_ids((1, 1), GPT2_SMALL["vocab_size"], seed=11)
        if impl.is_torch:
            torch = impl.ops
            self.next_id = torch.from_numpy(nxt)
            # transformers 5 renamed past_key_values to cache
            params = inspect.signature(self.model.forward).parameters
            self.cache_kw = "cache" if "cache" in params else "past_key_values"
            with torch.no_grad():
                out = self.model(torch.from_numpy(prompt), use_cache=True)
            self.cache = getattr(out, "cache", None) or out.past_key_values
        else:
            self.next_id = impl.xp.asarray(nxt)
            self.cache = self.model.new_cache(batch=1, max_len=context + 1)
            self.model(impl.xp.asarray(prompt), cache=self.cache)  # prefill
        self.run("gpt2_decode")  # warm-up
        impl.sync()

    def time_gpt2_decode(self, context, dtype, backend):
        self.run("gpt2_decode")
        self.impl.sync()


# ---------------------------------------------------------------------------------------------
# MiniLM


def _sentences(batch, vocab):
    """(ids, attention_mask), each (batch, longest): lengths spread over EMBED_LENGTHS, sorted."""
    rng = np.random.default_rng(99)
    lengths = np.sort(rng.integers(EMBED_LENGTHS[0], EMBED_LENGTHS[1] + 1, size=batch))[::-1]
    ids = np.zeros((batch, lengths[0]), dtype=np.int64)
    mask = np.zeros((batch, lengths[0]), dtype=np.int64)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(1000, vocab, size=n)
        mask[b, :n] = 1
    return ids, mask


def _pool(h, mask, xp):
    """Mean over real tokens, then L2-normalise: h (B, L, C), mask (B, L) -> (B, C)."""
    m = mask[..., None].astype(h.dtype)
    e = (h * m).sum(axis=1) / m.sum(axis=1)
    return e / xp.linalg.norm(e, axis=1, keepdims=True)


class MiniLMEmbed(Benchmark):
    KINDS = ("minilm_embed",)
    params = [["float32"], IMPLS]
    param_names = ["dtype", "backend"]

    def setup(self, dtype, backend):
        self.impl = impl = Impl(backend, dtype)
        s = MINILM
        ids, mask = _sentences(EMBED_BATCH, s["vocab_size"])
        if impl.is_torch:
            try:
                import transformers
            except ImportError:
                skip("transformers is not installed")
            torch = impl.ops
            cfg = transformers.BertConfig(vocab_size=s["vocab_size"], hidden_size=s["n_embd"],
                                          num_hidden_layers=s["n_layer"], num_attention_heads=s["n_head"],
                                          intermediate_size=s["n_inner"], max_position_embeddings=s["max_position"])
            torch.manual_seed(0)
            self.model = transformers.BertModel(cfg, add_pooling_layer=False).to(impl.tdtype).eval()
            self.ids, self.mask = torch.from_numpy(ids), torch.from_numpy(mask)
        else:
            Encoder, BertConfig = _nn("Encoder", "BertConfig")
            cfg = BertConfig(vocab_size=s["vocab_size"], n_embd=s["n_embd"], n_layer=s["n_layer"], n_head=s["n_head"],
                             n_inner=s["n_inner"], max_position_embeddings=s["max_position"])
            self.model = _move(_randomize(Encoder(cfg, dtype=impl.dtype)), impl)
            self.ids, self.mask = impl.xp.asarray(ids), impl.xp.asarray(mask)
        self.run("minilm_embed")  # warm-up
        impl.sync()

    def run(self, kind):
        impl = self.impl
        if kind != "minilm_embed":
            raise ValueError(kind)
        if impl.is_torch:
            torch = impl.ops
            with torch.no_grad():
                h = self.model(input_ids=self.ids, attention_mask=self.mask).last_hidden_state  # (B, L, C)
                m = self.mask[..., None].to(h.dtype)
                return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)
        h = self.model(self.ids, attention_mask=self.mask)  # (B, L, C)
        return _pool(h, self.mask, impl.xp)

    expected = _oracle

    def time_minilm_embed(self, dtype, backend):
        self.run("minilm_embed")
        self.impl.sync()
