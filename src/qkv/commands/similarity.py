"""``qkv similarity A B``: cosine similarity of two sentences' embeddings."""

from qkv.commands._models import load_encoder, nonempty_texts


def add_parser(sub):
    p = sub.add_parser("similarity", help="cosine similarity of two sentences")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--model", help="a BERT-family model folder (default: the packaged all-MiniLM-L6-v2)")
    return p


def run(args):
    a, b = nonempty_texts([args.a, args.b])
    emb = load_encoder(args.model).embed([a, b])
    print(f"{float(emb[0] @ emb[1]):.4f}")
    return 0
