"""Parameter accounting for a model configuration, in the vocabulary of the model API."""

from qkv.nn.config import BertConfig, GPTConfig, LlamaConfig


def count_parameters(config):
    """Parameter counts of a GPTConfig, BertConfig or LlamaConfig, with a breakdown.

    Per head: Wq and Wk (C x d), the value map Wv_down (C x d) and Wv_up (d x C): 4 C d weights.
    Per attention block: H heads (4 C^2 weights) plus biases (3C for q/k/v, C for the output).
    Per MLP: 2 C n_inner weights + n_inner + C biases. Layer norms: 2C each.
    The LM head of a GPT is tied to the token embeddings and adds nothing.
    """
    if isinstance(config, LlamaConfig):
        return _count_llama(config)
    if not isinstance(config, (GPTConfig, BertConfig)):
        raise TypeError(f"count_parameters expects a GPTConfig or BertConfig (or a LlamaConfig), got "
                        f"{type(config).__name__}")
    C, H, d, inner = config.n_embd, config.n_head, config.head_dim, config.n_inner
    head = {"Wq": C * d, "Wk": C * d, "Wv_down": C * d, "Wv_up": d * C}
    head["total"] = sum(head.values())
    attn_weights = H * head["total"]
    attn_biases = 4 * C
    mlp = 2 * C * inner + inner + C
    norms = 2 * 2 * C
    if isinstance(config, GPTConfig):
        emb = {"token": config.vocab_size * C, "position": config.block_size * C}
        final = 2 * C  # ln_f
    else:
        emb = {"token": config.vocab_size * C, "position": config.max_position_embeddings * C,
               "token_type": config.type_vocab_size * C, "layer_norm": 2 * C}
        final = 0
    return _breakdown(config.n_layer, emb, head, attn_weights, attn_biases, mlp, norms, final)


def _count_llama(config):
    """The same breakdown for a LlamaConfig. Grouped-query attention: H query heads of d share
    Hkv key/value heads, so a layer's attention holds 2 C H d (Wq, Wv_up) + 2 C Hkv d (Wk, Wv_down)
    weights; a head's Wk and Wv_down are those of its K/V head (counted once per layer, not per
    head). SwiGLU MLP: 3 C n_inner (gate, up, down). RMSNorm: C each (no bias). No position
    embeddings; an untied LM head adds V C."""
    C, H, Hkv, d, inner, V = (config.n_embd, config.n_head, config.n_kv_head, config.head_dim, config.n_inner,
                              config.vocab_size)
    head = {"Wq": C * d, "Wk": C * d, "Wv_down": C * d, "Wv_up": d * C}
    head["total"] = sum(head.values())
    attn_weights = 2 * C * H * d + 2 * C * Hkv * d
    attn_biases = (H + 2 * Hkv) * d * config.qkv_bias + C * config.proj_bias
    mlp = 3 * C * inner + (2 * inner + C) * config.mlp_bias
    norms = 2 * C
    emb = {"token": V * C, "position": 0, "lm_head": 0 if config.tie_word_embeddings else V * C}
    return _breakdown(config.n_layer, emb, head, attn_weights, attn_biases, mlp, norms, C)


def _breakdown(n, emb, head, attn_weights, attn_biases, mlp, norms, final):
    """The breakdown dict both counts return: n layers of (attention weights and biases, MLP, norms)
    between the embeddings ``emb`` (its total added here) and a final norm of ``final`` parameters."""
    emb["total"] = sum(emb.values())
    layer = attn_weights + attn_biases + mlp + norms
    return {
        "embeddings": emb,
        "per_head": head,
        "attention_per_layer": {"weights": attn_weights, "biases": attn_biases, "total": attn_weights + attn_biases},
        "mlp_per_layer": mlp,
        "layer_norms_per_layer": norms,
        "per_layer": layer,
        "attention_all_layers": n * (attn_weights + attn_biases),
        "mlp_all_layers": n * mlp,
        "final_layer_norm": final,
        "total": emb["total"] + n * layer + final,
    }
