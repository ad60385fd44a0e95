"""Tokenizers from a model folder's tokenizer.json, through the `tokenizers` package, and token
labels a person can read (byte-level BPE pieces decoded, whitespace made visible)."""

from functools import lru_cache
from pathlib import Path

# whitespace and control characters as visible glyphs, for axis labels
VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
MAX_LABEL = 16  # characters; longer labels end in "…"


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


@lru_cache(maxsize=1)
def _byte_decoder():
    """GPT-2's byte-level alphabet, inverted: the printable stand-in character -> the byte.

    GPT-2 (encoder.py, bytes_to_unicode) keeps the 188 printable Latin-1 bytes as themselves and
    maps the other 68 (space, control, ...) to 256 + n in order, so 'Ġ' (U+0120) is the space and
    'Ċ' (U+010A) the newline.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {chr(b): b for b in keep}, 0
    for b in range(256):
        if b not in keep:
            table[chr(256 + n)] = b
            n += 1
    return table


def is_byte_level(tokenizer):
    """True for a byte-level BPE tokenizer (GPT-2's): its pieces need _byte_decoder to be read."""
    return tokenizer is not None and type(tokenizer.decoder).__name__ == "ByteLevel"


def token_labels(tokens, byte_level=False):
    """Readable labels for token pieces: 'Ġthe' -> '␣the', 'Ċ' -> '↵' when ``byte_level``; a piece
    that holds part of a UTF-8 character shows its bytes ('\\xc3'); at most MAX_LABEL characters."""
    table = _byte_decoder()
    out = []
    for t in tokens:
        if byte_level and all(c in table for c in t):
            t = bytes(table[c] for c in t).decode("utf-8", errors="backslashreplace")
        t = "".join(VISIBLE.get(c, c) if c in VISIBLE or c.isprintable() else f"\\x{ord(c):02x}" for c in t)
        out.append(t if len(t) <= MAX_LABEL else t[:MAX_LABEL - 1] + "…")
    return out
