"""Parameter accounting for a model configuration, in the vocabulary of the model API."""

from qkv.nn.config import BertConfig, GPTConfig


def count_parameters(config):
    """Parameter counts of a GPTConfig or BertConfig, with a breakdown.

    Per head: Wq and Wk (C x d), the value map Wv_down (C x d) and Wv_up (d x C): 4 C d weights.
    Per attention block: H heads (4 C^2 weights) plus biases (3C for q/k/v, C for the output).
    Per MLP: 2 C n_inner weights + n_inner + C biases. Layer norms: 2C each.
    The LM head of a GPT is tied to the token embeddings and adds nothing.
    """
    if not isinstance(config, (GPTConfig, BertConfig)):
        raise TypeError(f"count_parameters expects a GPTConfig or BertConfig, got {type(config).__name__}")
    C, H, d, inner = config.n_embd, config.n_head, config.head_dim, config.n_inner
    head = {"Wq": C * d, "Wk": C * d, "Wv_down": C * d, "Wv_up": d * C}
    head["total"] = sum(head.values())
    attn_weights = H * head["total"]
    attn_biases = 4 * C
    mlp = 2 * C * inner + inner + C
    norms = 2 * 2 * C
    layer = attn_weights + attn_biases + mlp + norms
    if isinstance(config, GPTConfig):
        emb = {"token": config.vocab_size * C, "position": config.block_size * C}
        final = 2 * C  # ln_f
    else:
        emb = {"token": config.vocab_size * C, "position": config.max_position_embeddings * C,
               "token_type": config.type_vocab_size * C, "layer_norm": 2 * C}
        final = 0
    emb["total"] = sum(emb.values())
    n = config.n_layer
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
