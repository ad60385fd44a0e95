"""``qkv embed TEXT...``: sentence embeddings (all-MiniLM-L6-v2 by default)."""

import json

from qkv.commands._models import load_encoder, nonempty_texts


def add_parser(sub):
    p = sub.add_parser("embed", help="sentence embeddings of TEXTs (mean-pooled, L2-normalised)")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--model", help="a BERT-family model folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--json", action="store_true", help="print the full vectors as JSON")
    return p


def run(args):
    texts = nonempty_texts(args.texts)
    emb = load_encoder(args.model).embed(texts)
    if args.json:
        print(json.dumps({"texts": texts, "embeddings": emb.round(7).tolist()}))
    else:
        for t, e in zip(texts, emb):
            head = " ".join(f"{v:+.4f}" for v in e[:6])
            print(f"[{head} ... ] ({e.size} dims)  {t}")
    return 0
