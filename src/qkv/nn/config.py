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


def _int(v):
    """A config integer: an int, or a float with an integral value; anything else is a ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"expected an integer, got {v!r}")
    if int(v) != v:
        raise ValueError(f"expected an integer, got {v!r}")
    return int(v)


def config_fields(cfg):
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}
