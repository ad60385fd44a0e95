"""``qkv inspect TEXT --layer N --out attn.png``: a heatmap of what each head attends to.

Up to ALL_HEADS_UP_TO tokens every head gets a panel; past that, one panel of the mean over heads
unless ``--head`` picks one, and ``--tokens A:B`` draws a window of the query/key positions. The
figure itself is bounded by qkv.plot (pixels and labels), so any text gives a PNG in seconds.
"""

import argparse
from pathlib import Path

from qkv.cli import CommandError, nonneg_int, user_input
from qkv.commands._models import load_encoder, load_model, nonempty_texts, progress

ALL_HEADS_UP_TO = 64  # tokens: a panel per head up to here, the head mean past it (without --head)


def token_window(text):
    """argparse type for --tokens A:B: token positions A..B-1 (either end may be left out)."""
    a, sep, b = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected A:B (token positions, B excluded), got {text!r}")
    start = nonneg_int(a) if a.strip() else 0
    stop = nonneg_int(b) if b.strip() else None
    if stop is not None and stop <= start:
        raise argparse.ArgumentTypeError(f"A:B needs A < B, got {text!r}")
    return start, stop


def add_parser(sub):
    p = sub.add_parser("inspect", help="attention heatmap of one layer for a sentence (PNG)")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--layer", type=nonneg_int, default=0)
    p.add_argument("--head", type=nonneg_int, default=None,
                   help=f"one head (default: a panel per head up to {ALL_HEADS_UP_TO} tokens, their mean past that)")
    p.add_argument("--tokens", type=token_window, default=None, metavar="A:B",
                   help="draw query and key positions A..B-1 only (rows keep their weights over all keys)")
    p.add_argument("--out", default="attention.png")
    p.add_argument("--model", help="a model folder (default: the packaged all-MiniLM-L6-v2)")
    return p


def run(args):
    import numpy as np

    from qkv._progress import progress_bar
    from qkv.io.tokenizer import is_byte_level, token_labels

    (text,) = nonempty_texts([args.text])
    out = Path(args.out)
    if out.is_dir():  # before the model runs, not after
        raise CommandError(f"cannot write {out}: it is a folder (give a file name such as {out / 'attention.png'})")
    if not out.parent.is_dir():
        raise CommandError(f"cannot write {out}: folder {out.parent} does not exist")
    with progress_bar(total=3, desc="inspect", unit="step") as bar:
        bar.set_postfix_str("loading the model")
        model = load_encoder() if args.model is None else load_model(args.model)
        n_layer, n_head = model.config.n_layer, model.config.n_head
        if args.layer >= n_layer:
            raise CommandError(f"--layer {args.layer} is out of range: the model has {n_layer} layers "
                               f"(0..{n_layer - 1})")
        if args.head is not None and args.head >= n_head:
            raise CommandError(f"--head {args.head} is out of range: the model has {n_head} heads (0..{n_head - 1})")
        enc = model.tokenizer.encode(text)
        L = len(enc.ids)
        start, stop = args.tokens or (0, None)
        if start >= L:
            raise CommandError(f"--tokens {start}:{'' if stop is None else stop} starts past the end: "
                               f"the text has {L} tokens")
        stop = L if stop is None else min(stop, L)
        bar.update()

        bar.set_postfix_str(f"running the model on {L} tokens")
        with user_input():  # e.g. more tokens than a GPT's context
            _, trace = model(np.array([enc.ids], dtype=np.int64), return_attention=True)
        weights = trace["attention"][args.layer][0][:, start:stop, start:stop]  # (H, n, n)
        labels = token_labels(enc.tokens[start:stop], byte_level=is_byte_level(model.tokenizer))
        n = stop - start
        if args.head is not None:
            heads, what = args.head, f"head {args.head}"
        elif n <= ALL_HEADS_UP_TO:
            heads, what = None, f"{n_head} heads"
        else:
            heads, what = "mean", (f"the mean of {n_head} heads, as {n} > {ALL_HEADS_UP_TO} tokens; "
                                   "--head H for one head, --tokens A:B for a window")
        bar.update()

        bar.set_postfix_str("drawing")
        short = text if len(text) <= 40 else text[:39] + "…"
        window = "" if (start, stop) == (0, L) else f", tokens {start}:{stop} of {L}"
        from qkv.plot import attention_heatmap

        # an OSError writing the PNG (permissions, a full disk) is one line and exit 2, from cli.main
        out = attention_heatmap(weights, labels, out, heads=heads, title=f"{short!r} — layer {args.layer}{window}")
        bar.update()
    cut = " (truncated to the model's limit)" if enc.overflowing else ""
    progress(f"wrote {out} ({L} tokens{cut}{window}, layer {args.layer}, {what})")
    return 0
