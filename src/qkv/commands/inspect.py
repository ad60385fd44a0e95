"""``qkv inspect TEXT --layer N --out attn.png``: a heatmap of what each head attends to."""

from qkv.cli import CommandError
from qkv.commands._models import load_encoder, load_model, nonempty_texts, progress


def add_parser(sub):
    p = sub.add_parser("inspect", help="attention heatmap of one layer for a sentence (PNG)")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--head", type=int, default=None, help="one head (default: every head, one panel each)")
    p.add_argument("--out", default="attention.png")
    p.add_argument("--model", help="a model folder (default: the packaged all-MiniLM-L6-v2)")
    return p


def run(args):
    import numpy as np

    (text,) = nonempty_texts([args.text])
    model = load_encoder() if args.model is None else load_model(args.model)
    n_layer = model.config.n_layer
    if not 0 <= args.layer < n_layer:
        raise CommandError(f"--layer {args.layer} is out of range: the model has {n_layer} layers (0..{n_layer - 1})")
    if args.head is not None and not 0 <= args.head < model.config.n_head:
        raise CommandError(f"--head {args.head} is out of range: the model has {model.config.n_head} heads")
    enc = model.tokenizer.encode(text)
    ids = np.array([enc.ids], dtype=np.int64)
    _, trace = model(ids, return_attention=True)
    weights = trace["attention"][args.layer][0]  # (H, L, L)
    try:
        from qkv.plot import attention_heatmap
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    attention_heatmap(weights, enc.tokens, args.out, heads=args.head,
                      title=f"{text!r} — layer {args.layer}")
    progress(f"wrote {args.out} ({len(enc.tokens)} tokens, layer {args.layer}, "
             f"{'head ' + str(args.head) if args.head is not None else str(model.config.n_head) + ' heads'})")
    return 0
