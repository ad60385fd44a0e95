"""Model loading shared by the subcommands: the packaged MiniLM by default, or a folder.

Which folders qkv can load is decided once, in qkv.io.checkpoint.MODEL_TYPES: config.json's
model_type picks the class. Every failure to load (no folder, a file instead of a folder, a missing or corrupt
config.json / model.safetensors / tokenizer.json, an unsupported model_type) ends as one line.
"""

import sys
from pathlib import Path

from qkv.cli import CommandError, user_input

from qkv.io.checkpoint import MODEL_TYPES, supported_model_types

FOLDER_HELP = "a model folder: config.json, model.safetensors (or shards), tokenizer.json"


def progress(msg):
    """Status lines go to stderr so stdout stays the result."""
    print(msg, file=sys.stderr, flush=True)


def model_type(folder):
    """config.json's model_type, checked against qkv.io.checkpoint.MODEL_TYPES."""
    from qkv.io import read_config
    from qkv.io.checkpoint import model_type as checked_type

    with user_input():
        return checked_type(read_config(folder), folder)


def model_config(folder):
    """The qkv config of a folder (GPTConfig, BertConfig or LlamaConfig, by config.json's model_type)."""
    import qkv.nn
    from qkv.io import read_config

    kind = model_type(folder)
    cls = {"GPT": qkv.nn.GPTConfig, "Encoder": qkv.nn.BertConfig, "Llama": qkv.nn.LlamaConfig}[MODEL_TYPES[kind][0]]
    with user_input():
        return cls.from_hf({**read_config(folder), "model_type": kind})


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
    """A GPT, Llama or Encoder, by the folder's config.json model_type, with its tokenizer."""
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
