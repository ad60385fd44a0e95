"""``qkv search OUT "query" [-k 10]``: the k items of a corpus embedded by ``qkv embed --input
FILE --output OUT`` nearest to a query, by exact cosine (one matrix-vector product per block of
OUT/embeddings.npy, so memory stays flat; qkv.corpus.top_k). Prints rank, score and the item (its
id first, for JSON Lines input with ids), read back from the input file at its byte offset."""

import json
import os

from qkv.cli import CommandError, positive_int, user_input
from qkv.commands._models import load_encoder, progress


def add_parser(sub):
    p = sub.add_parser("search", help="the items of an embedded corpus (qkv embed --input) nearest to a query")
    p.add_argument("out", metavar="OUT", help="a folder written by qkv embed --input FILE --output OUT")
    p.add_argument("query", metavar="QUERY", help="the text to look for")
    p.add_argument("-k", type=positive_int, default=10, help="how many items to print (default: 10)")
    p.add_argument("--model", help="the model folder (default: the one OUT was embedded with)")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    return p


def run(args):
    import numpy as np

    from qkv import corpus

    with user_input():
        m, emb = corpus.open_corpus(args.out)
    folder = args.model or m["model"]["folder"]
    if folder is None:
        raise CommandError(f"{args.out} does not say which model folder made it; give --model")
    model = load_encoder(folder)
    if corpus.model_fingerprint(model) != m["model"]["fingerprint"]:
        raise CommandError(f"{folder} is not the model {args.out} was embedded with ({m['model']['name']}); "
                           f"give that one with --model")
    if not args.query.strip():
        raise CommandError("give a non-empty QUERY")
    q = model.embed([args.query])[0]  # (C,)
    rows, scores = corpus.top_k(emb, q, args.k)
    src = m["input"]["path"]
    if os.path.isfile(src) and os.path.getsize(src) == m["input"]["size"]:
        offsets = np.load(os.path.join(args.out, "offsets.npy"), mmap_mode="r")
        with user_input():
            found = corpus.items(m, offsets[rows])
    else:
        progress(f"warning: the input {src} is gone or changed; printing row numbers only")
        found = [(None, None)] * len(rows)
    hits = [{"rank": r + 1, "score": float(s), "row": int(i), "id": item_id, "text": text}
            for r, (i, s, (text, item_id)) in enumerate(zip(rows, scores, found))]
    if args.json:
        print(json.dumps(hits, ensure_ascii=False))
        return 0
    for h in hits:
        label = f"[{h['id']}] " if h["id"] is not None else ""
        item = f"row {h['row']}" if h["text"] is None else " ".join(h["text"].split())
        print(f"{h['rank']:>3}  {h['score']:.4f}  {label}{item}")
    return 0
