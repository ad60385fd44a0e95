"""Model loading shared by the subcommands: the packaged MiniLM by default, or a folder."""

import sys
from pathlib import Path

from qkv.cli import CommandError


def progress(msg):
    """Status lines go to stderr so stdout stays the result."""
    print(msg, file=sys.stderr, flush=True)


def load_encoder(path=None):
    from qkv.io import find_minilm
    from qkv.nn import Encoder

    if path is None:
        try:
            path = find_minilm()
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from None
    return Encoder.from_pretrained(_existing(path))


def load_model(path):
    """A GPT or an Encoder, by the folder's config.json model_type."""
    from qkv.io import read_config
    from qkv.nn import GPT, Encoder

    folder = _existing(path)
    try:
        kind = read_config(folder).get("model_type", "gpt2")
        cls = GPT if kind == "gpt2" else Encoder
        return cls.from_pretrained(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def _existing(path):
    p = Path(path)
    if not p.is_dir():
        raise CommandError(f"model folder not found: {p}")
    return p


def nonempty_texts(texts):
    texts = [t for t in texts]
    if not texts or any(not t.strip() for t in texts):
        raise CommandError("give at least one non-empty text")
    return texts
