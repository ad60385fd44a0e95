"""``qkv embed TEXT...`` (or ``--file FILE``, one text a line): sentence embeddings
(all-MiniLM-L6-v2 by default), with a progress bar over many texts when stderr is a terminal."""

import json
import sys

from qkv.cli import CommandError, user_input
from qkv.commands._models import load_encoder, nonempty_texts

CHUNK = 128  # texts per Encoder.embed call: one progress-bar step (embed sorts and batches within it)


def add_parser(sub):
    p = sub.add_parser("embed", help="sentence embeddings of TEXTs (mean-pooled, L2-normalised)")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--file", metavar="FILE", help="also embed every non-blank line of FILE ('-' reads stdin)")
    p.add_argument("--model", help="a BERT-family model folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--json", action="store_true", help="print the full vectors as JSON")
    return p


def read_lines(path):
    """The non-blank lines of a UTF-8 text file, or of stdin for '-'."""
    with user_input():  # a missing file, a folder, bytes that are not UTF-8
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise CommandError(f"{path} has no non-blank lines")
    return lines


def run(args):
    import numpy as np

    from qkv._progress import progress_bar

    texts = list(args.texts) + (read_lines(args.file) if args.file else [])
    texts = nonempty_texts(texts)
    model = load_encoder(args.model)
    with progress_bar(total=len(texts), desc="embed", unit="text") as bar:
        parts = []
        for s in range(0, len(texts), CHUNK):
            parts.append(model.embed(texts[s:s + CHUNK]))
            bar.update(len(parts[-1]))
    emb = np.concatenate(parts)  # (N, C)
    if args.json:
        print(json.dumps({"texts": texts, "embeddings": emb.round(7).tolist()}))
    else:
        for t, e in zip(texts, emb):
            head = " ".join(f"{v:+.4f}" for v in e[:6])
            print(f"[{head} ... ] ({e.size} dims)  {t}")
    return 0
