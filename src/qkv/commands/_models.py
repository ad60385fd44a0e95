"""Model loading shared by the subcommands: the packaged MiniLM by default, or a folder.

Which folders qkv can load is decided here, once (MODEL_TYPES): config.json's model_type picks the
class. Every failure to load (no folder, a file instead of a folder, a missing or corrupt
config.json / model.safetensors / tokenizer.json, an unsupported model_type) ends as one line.
"""

import sys
from pathlib import Path

from qkv.cli import CommandError, user_input

# config.json model_type -> (qkv.nn class, what it is). Only these load with the right numbers:
# RoBERTa-family folders (roberta, xlm-roberta, camembert) have BERT's tensor names but number
# positions from padding_idx + 1, so they are refused rather than silently embedded wrong.
MODEL_TYPES = {"gpt2": ("GPT", "GPT-2 decoder"), "bert": ("Encoder", "BERT-family encoder")}
FOLDER_HELP = "a model folder: config.json, model.safetensors, tokenizer.json"


def progress(msg):
    """Status lines go to stderr so stdout stays the result."""
    print(msg, file=sys.stderr, flush=True)


def model_type(folder):
    """config.json's model_type, checked against MODEL_TYPES (inferred from the fields if absent)."""
    from qkv.io import read_config

    with user_input():
        cfg = read_config(folder)
    kind = cfg.get("model_type")
    if kind is None:  # hand-written configs: GPT-2 and BERT name their fields differently
        kind = "gpt2" if "n_layer" in cfg else "bert" if "num_hidden_layers" in cfg else None
        if kind is None:
            raise CommandError(f"{folder}/config.json has no model_type; qkv loads {supported()}")
    if kind not in MODEL_TYPES:
        raise CommandError(f"{folder}: model_type {kind!r} is not supported; qkv loads {supported()}")
    return kind


def supported():
    return ", ".join(f"{k!r} ({what})" for k, (_, what) in MODEL_TYPES.items())


def load_encoder(path=None):
    """An Encoder (sentence embeddings): the packaged all-MiniLM-L6-v2, or a BERT-family folder."""
    from qkv.io import find_minilm
    from qkv.nn import Encoder

    if path is None:
        try:
            path = find_minilm()
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from None
    folder = model_folder(path)
    kind = model_type(folder)
    if kind != "bert":
        raise CommandError(f"{folder} holds a {MODEL_TYPES[kind][1]} (model_type {kind!r}); sentence embeddings "
                           f"need a {MODEL_TYPES['bert'][1]} (model_type 'bert'), or no --model for all-MiniLM-L6-v2")
    with user_input():
        return Encoder.from_pretrained(folder)


def load_model(path):
    """A GPT or an Encoder, by the folder's config.json model_type, with its tokenizer."""
    import qkv.nn

    folder = model_folder(path)
    cls = getattr(qkv.nn, MODEL_TYPES[model_type(folder)][0])
    with user_input():
        model = cls.from_pretrained(folder)
    if model.tokenizer is None:
        raise CommandError(f"{folder}/tokenizer.json is missing (qkv needs it to turn text into token ids)")
    return model


def model_folder(path):
    p = Path(path)
    if p.is_file():
        raise CommandError(f"{p} is a file; --model takes {FOLDER_HELP}")
    if not p.is_dir():
        raise CommandError(f"model folder not found: {p}")
    return p


def nonempty_texts(texts):
    texts = [t for t in texts]
    if not texts or any(not t.strip() for t in texts):
        raise CommandError("give at least one non-empty text")
    return texts
