"""``qkv params gpt3|gpt2|llama3-8b|PATH``: where a model's parameters live."""

from qkv.cli import CommandError

PRESETS = {"gpt2": "gpt2", "gpt2-medium": "gpt2_medium", "gpt2-large": "gpt2_large", "gpt2-xl": "gpt2_xl",
           "gpt3": "gpt3_175b", "minilm": None, "bert-base": None}
LLAMA_PRESETS = {"llama3-8b": "llama3_8b", "llama3.2-1b": "llama3_2_1b", "mistral-7b": "mistral_7b",
                 "qwen2.5-0.5b": "qwen2_5_0_5b", "smollm-135m": "smollm_135m"}


def add_parser(sub):
    p = sub.add_parser("params", help="parameter counts: gpt2, gpt2-medium/large/xl, gpt3, bert-base, minilm, "
                                      f"{', '.join(LLAMA_PRESETS)}, or a folder")
    p.add_argument("model", metavar="gpt3|gpt2|PATH")
    return p


def _config(name):
    from pathlib import Path

    from qkv.commands._models import model_config, model_folder
    from qkv.nn import BertConfig, GPTConfig, LlamaConfig

    if name in ("minilm",):
        return BertConfig.minilm_l6()
    if name == "bert-base":
        return BertConfig()
    if name in PRESETS:
        return getattr(GPTConfig, PRESETS[name])()
    if name in LLAMA_PRESETS:
        return getattr(LlamaConfig, LLAMA_PRESETS[name])()
    if not Path(name).exists():
        raise CommandError(f"unknown model {name!r}: give one of {', '.join([*PRESETS, *LLAMA_PRESETS])} or a "
                           "model folder")
    return model_config(model_folder(name))


def _fmt(n):
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n:>15,}  ({n / div:.2f} {unit})"
    return f"{n:>15,}"


def run(args):
    from qkv.nn import count_parameters

    cfg = _config(args.model)
    r = count_parameters(cfg)
    ph = r["per_head"]
    n_kv = getattr(cfg, "n_kv_head", cfg.n_head)
    kv = f" sharing {n_kv} K/V" if n_kv != cfg.n_head else ""  # grouped-query: a head's Wk, Wv_down are shared
    rows = [
        ("token embeddings", r["embeddings"]["token"]),
        ("position embeddings", r["embeddings"]["position"]),
        *([("LM head (untied)", r["embeddings"]["lm_head"])] if r["embeddings"].get("lm_head") else []),
        (f"one head: Wq ({cfg.n_embd} x {cfg.head_dim})", ph["Wq"]),
        (f"one head: Wk ({cfg.n_embd} x {cfg.head_dim})", ph["Wk"]),
        (f"one head: Wv_down ({cfg.n_embd} x {cfg.head_dim})", ph["Wv_down"]),
        (f"one head: Wv_up ({cfg.head_dim} x {cfg.n_embd})", ph["Wv_up"]),
        ("one head, all four", ph["total"]),
        (f"one attention block ({cfg.n_head} heads, weights)", r["attention_per_layer"]["weights"]),
        ("one MLP", r["mlp_per_layer"]),
        ("one layer (attention + MLP + norms)", r["per_layer"]),
        (f"all attention ({cfg.n_layer} layers)", r["attention_all_layers"]),
        (f"all MLPs ({cfg.n_layer} layers)", r["mlp_all_layers"]),
        ("total", r["total"]),
    ]
    print(f"{args.model}: {cfg.n_layer} layers, {cfg.n_head} heads{kv} of {cfg.head_dim}, width {cfg.n_embd}")
    for name, n in rows:
        print(f"  {name:<44} {_fmt(n)}")
    return 0
