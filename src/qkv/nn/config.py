"""Model configurations: dataclasses with GPT-2 / BERT defaults, a comment on every field."""

from dataclasses import asdict, dataclass, fields


@dataclass
class GPTConfig:
    """A GPT-style decoder (GPT-2 small by default)."""

    vocab_size: int = 50257  # tokens in the vocabulary (GPT-2's BPE)
    block_size: int = 1024  # context length: learned position embeddings exist for 0..block_size-1
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # residual stream width C; each head has C / n_head dims
    n_inner: int = None  # MLP hidden width, default 4 * n_embd
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_tanh"  # GPT-2 uses the tanh approximation of GELU
    bias: bool = True  # biases in linears (GPT-2 has them)
    attn_only: bool = False  # blocks without MLP (and ln_2): the attention-only transformers of the induction-head papers

    def __post_init__(self):
        if self.n_inner is None:
            self.n_inner = 4 * self.n_embd
        for f in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_inner"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"GPTConfig.{f} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @classmethod
    def gpt2(cls, **kw):
        return cls(**kw)

    @classmethod
    def gpt2_medium(cls, **kw):
        return cls(n_layer=24, n_head=16, n_embd=1024, **kw)

    @classmethod
    def gpt2_large(cls, **kw):
        return cls(n_layer=36, n_head=20, n_embd=1280, **kw)

    @classmethod
    def gpt2_xl(cls, **kw):
        return cls(n_layer=48, n_head=25, n_embd=1600, **kw)

    @classmethod
    def gpt3_175b(cls, **kw):
        """GPT-3 175B (Brown et al. 2020, table 2.1): 96 layers, 96 heads of 128, d_model 12288, context 2048."""
        return cls(n_layer=96, n_head=96, n_embd=12288, block_size=2048, **kw)

    @classmethod
    def from_hf(cls, cfg):
        """From a Hugging Face GPT-2 config.json dict."""
        try:
            act = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}[
                cfg.get("activation_function", "gelu_new")]
            return cls(vocab_size=_int(cfg["vocab_size"]), block_size=_int(cfg.get("n_positions", cfg.get("n_ctx", 1024))),
                       n_layer=_int(cfg["n_layer"]), n_head=_int(cfg["n_head"]), n_embd=_int(cfg["n_embd"]),
                       n_inner=None if cfg.get("n_inner") is None else _int(cfg["n_inner"]),
                       layer_norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)), activation=act)
        except KeyError as exc:
            raise ValueError(f"GPT-2 config.json is missing or has an unsupported field: {exc}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"GPT-2 config.json has a malformed field: {exc}") from None

    def to_dict(self):
        return asdict(self)


@dataclass
class BertConfig:
    """A BERT-style encoder (BERT-base by default; all-MiniLM-L6-v2 is 6 layers, 12 heads, 384 wide)."""

    vocab_size: int = 30522  # WordPiece vocabulary
    max_position_embeddings: int = 512  # learned positions
    type_vocab_size: int = 2  # token types (segments A/B)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768  # hidden size
    n_inner: int = 3072  # intermediate (MLP) size
    layer_norm_epsilon: float = 1e-12  # BERT's LayerNorm eps
    activation: str = "gelu"  # exact (erf) GELU
    pad_token_id: int = 0

    def __post_init__(self):
        for f in ("vocab_size", "max_position_embeddings", "type_vocab_size", "n_layer", "n_head", "n_embd", "n_inner"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"BertConfig.{f} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"BertConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @classmethod
    def minilm_l6(cls, **kw):
        return cls(n_layer=6, n_head=12, n_embd=384, n_inner=1536, **kw)

    @classmethod
    def from_hf(cls, cfg):
        """From a Hugging Face BERT config.json dict."""
        try:
            act = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu"}[cfg.get("hidden_act", "gelu")]
            return cls(vocab_size=_int(cfg["vocab_size"]), max_position_embeddings=_int(cfg["max_position_embeddings"]),
                       type_vocab_size=_int(cfg.get("type_vocab_size", 2)), n_layer=_int(cfg["num_hidden_layers"]),
                       n_head=_int(cfg["num_attention_heads"]), n_embd=_int(cfg["hidden_size"]),
                       n_inner=_int(cfg["intermediate_size"]), layer_norm_epsilon=float(cfg.get("layer_norm_eps", 1e-12)),
                       activation=act, pad_token_id=_int(cfg.get("pad_token_id", 0) or 0))
        except KeyError as exc:
            raise ValueError(f"BERT config.json is missing or has an unsupported field: {exc}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"BERT config.json has a malformed field: {exc}") from None


# rope_scaling types qkv.rope applies (Hugging Face's rope_type names); "default" is none at all
_ROPE_TYPES = ("llama3",)
_HF_DECODERS = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}


@dataclass
class LlamaConfig:
    """A Llama-family decoder: RMSNorm before attention and MLP, rotary positions on q and k,
    grouped-query attention, a SwiGLU MLP, no biases (SmolLM-135M by default).

    Llama, Mistral and Qwen2 differ only in fields here: Qwen2 has q/k/v biases (qkv_bias),
    Llama 3 scales its rotary frequencies (rope_scaling), small models tie the LM head to the
    token embeddings.
    """

    vocab_size: int = 49152  # tokens in the vocabulary
    block_size: int = 2048  # context length (max_position_embeddings); rotary positions have no table
    n_layer: int = 30  # transformer blocks
    n_head: int = 9  # query heads per block
    n_kv_head: int = 3  # key/value heads (n_head % n_kv_head == 0); each serves n_head / n_kv_head queries
    n_embd: int = 576  # residual stream width C
    n_inner: int = 1536  # SwiGLU hidden width (intermediate_size): gate and up are (C, n_inner) each
    head_dim: int = None  # d, default n_embd // n_head (Mistral-Nemo and Qwen3 set it apart); even
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0  # base of the rotary frequencies theta^(-2i/d)
    rope_scaling: dict = None  # Hugging Face's rope_scaling, e.g. {"rope_type": "llama3", "factor": 8.0, ...}
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2; Llama's attention_bias)
    proj_bias: bool = False  # bias on the output projection (Llama's attention_bias)
    mlp_bias: bool = False  # biases on gate/up/down (Llama's mlp_bias)
    tie_word_embeddings: bool = True  # the LM head is the token embedding matrix (else its own (C, V))
    sliding_window: int = None  # Mistral's attention window; longer sequences are refused (not implemented)

    def __post_init__(self):
        if self.head_dim is None and isinstance(self.n_head, int) and self.n_head > 0:
            self.head_dim = self.n_embd // self.n_head
        for f in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "n_inner", "head_dim"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"LlamaConfig.{f} must be a positive int, got {v!r}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"LlamaConfig: n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim ({self.head_dim}) must be even (rotary pairs)")
        for f in ("rms_norm_eps", "rope_theta"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise ValueError(f"LlamaConfig.{f} must be a positive finite number, got {v!r}")
        for f in ("qkv_bias", "proj_bias", "mlp_bias", "tie_word_embeddings"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"LlamaConfig.{f} must be a bool, got {getattr(self, f)!r}")
        w = self.sliding_window
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w <= 0):
            raise ValueError(f"LlamaConfig.sliding_window must be None or a positive int, got {w!r}")
        self.rope_scaling = _rope_scaling(self.rope_scaling)

    @classmethod
    def smollm_135m(cls, **kw):
        """HuggingFaceTB/SmolLM-135M: 30 layers, 9 query / 3 KV heads of 64, SwiGLU 1536, tied embeddings."""
        return cls(**kw)

    @classmethod
    def llama3_8b(cls, **kw):
        """Meta-Llama-3-8B: 32 layers, 32 query / 8 KV heads of 128, SwiGLU 14336, vocab 128256 (8.03B)."""
        return cls(**{**dict(vocab_size=128256, block_size=8192, n_layer=32, n_head=32, n_kv_head=8, n_embd=4096,
                             n_inner=14336, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False), **kw})

    @classmethod
    def llama3_2_1b(cls, **kw):
        """Llama-3.2-1B: 16 layers, 32 query / 8 KV heads of 64, SwiGLU 8192, llama3 rope scaling, tied (1.24B)."""
        scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
        return cls(**{**dict(vocab_size=128256, block_size=131072, n_layer=16, n_head=32, n_kv_head=8, n_embd=2048,
                             n_inner=8192, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=scaling,
                             tie_word_embeddings=True), **kw})

    @classmethod
    def mistral_7b(cls, **kw):
        """Mistral-7B-v0.1: 32 layers, 32 query / 8 KV heads of 128, SwiGLU 14336, vocab 32000 (7.24B)."""
        return cls(**{**dict(vocab_size=32000, block_size=32768, n_layer=32, n_head=32, n_kv_head=8, n_embd=4096,
                             n_inner=14336, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                             sliding_window=4096), **kw})

    @classmethod
    def qwen2_5_0_5b(cls, **kw):
        """Qwen2.5-0.5B: 24 layers, 14 query / 2 KV heads of 64, q/k/v biases, SwiGLU 4864, tied (0.49B)."""
        return cls(**{**dict(vocab_size=151936, block_size=32768, n_layer=24, n_head=14, n_kv_head=2, n_embd=896,
                             n_inner=4864, rms_norm_eps=1e-6, rope_theta=1000000.0, qkv_bias=True,
                             tie_word_embeddings=True), **kw})

    @classmethod
    def from_hf(cls, cfg):
        """From a Hugging Face config.json dict of model_type llama, qwen2 or mistral (rope fields as
        rope_theta + rope_scaling, or as transformers 5's rope_parameters)."""
        kind = cfg.get("model_type", "llama")
        name = _HF_DECODERS.get(kind, kind)
        try:
            if kind not in _HF_DECODERS:
                raise KeyError(f"model_type {kind!r}")
            if cfg.get("hidden_act", "silu") != "silu":
                raise KeyError(f"hidden_act {cfg['hidden_act']!r} (the SwiGLU MLP needs 'silu')")
            rope = cfg.get("rope_parameters")
            if rope is not None and not isinstance(rope, dict):
                raise ValueError(f"rope_parameters must be an object, got {rope!r}")
            rope = dict(rope or {})
            theta = rope.pop("rope_theta", cfg.get("rope_theta", 10000.0))
            scaling = cfg.get("rope_scaling") if cfg.get("rope_scaling") is not None else rope or None
            window = None
            if kind == "mistral":
                window = cfg.get("sliding_window")
            elif kind == "qwen2" and (cfg.get("use_sliding_window") or "sliding_attention" in (cfg.get("layer_types") or ())):
                raise KeyError("use_sliding_window (Qwen2's sliding-window layers are not implemented)")
            attention_bias = cfg.get("attention_bias", False)
            n_head = _int(cfg["num_attention_heads"])
            return cls(vocab_size=_int(cfg["vocab_size"]), block_size=_int(cfg.get("max_position_embeddings", 2048)),
                       n_layer=_int(cfg["num_hidden_layers"]), n_head=n_head,
                       n_kv_head=_int(cfg.get("num_key_value_heads") or n_head), n_embd=_int(cfg["hidden_size"]),
                       n_inner=_int(cfg["intermediate_size"]),
                       head_dim=None if cfg.get("head_dim") is None else _int(cfg["head_dim"]),
                       rms_norm_eps=_float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=_float(theta),
                       rope_scaling=scaling, qkv_bias=True if kind == "qwen2" else attention_bias,
                       proj_bias=False if kind == "qwen2" else attention_bias,
                       mlp_bias=False if kind != "llama" else cfg.get("mlp_bias", False),
                       tie_word_embeddings=cfg.get("tie_word_embeddings", False),
                       sliding_window=None if window is None else _int(window))
        except KeyError as exc:
            raise ValueError(f"{name} config.json is missing or has an unsupported field: {exc.args[0]}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{name} config.json has a malformed field: {exc}") from None

    def to_dict(self):
        return asdict(self)


def _float(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)


def _rope_scaling(s):
    """rope_scaling checked and normalised: None for no scaling, else a dict with rope_type and floats."""
    if s is None:
        return None
    if not isinstance(s, dict):
        raise ValueError(f"LlamaConfig.rope_scaling must be None or a dict, got {s!r}")
    kind = s.get("rope_type", s.get("type", "default"))
    if kind == "default":
        return None
    if kind not in _ROPE_TYPES:
        raise ValueError(f"LlamaConfig.rope_scaling: rope_type {kind!r} is not supported (qkv applies "
                         f"{', '.join(map(repr, _ROPE_TYPES))} or none)")
    out = {"rope_type": kind}
    for f in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        v = s.get(f)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
            raise ValueError(f"LlamaConfig.rope_scaling[{f!r}] must be a positive finite number, got {v!r}")
        out[f] = float(v)
    if out["high_freq_factor"] <= out["low_freq_factor"]:
        raise ValueError(f"LlamaConfig.rope_scaling: high_freq_factor ({out['high_freq_factor']}) must exceed "
                         f"low_freq_factor ({out['low_freq_factor']})")
    return out


def _int(v):
    """A config integer: an int, or a float with an integral value; anything else is a ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"expected an integer, got {v!r}")
    if int(v) != v:
        raise ValueError(f"expected an integer, got {v!r}")
    return int(v)


def config_fields(cfg):
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}
