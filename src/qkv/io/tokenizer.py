"""Tokenizers from a model folder's tokenizer.json, through the `tokenizers` package."""

from pathlib import Path


def load_tokenizer(folder):
    """The folder's tokenizer.json with padding off (qkv pads each batch to its longest sentence)."""
    from tokenizers import Tokenizer

    f = Path(folder) / "tokenizer.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f} is missing")
    try:
        tok = Tokenizer.from_file(str(f))
    except Exception as exc:  # the tokenizers package raises its own Exception type
        raise ValueError(f"{f} is not a valid tokenizer.json: {exc}") from None
    tok.no_padding()
    return tok
