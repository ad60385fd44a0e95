"""``qkv inspect``: pictures of what happens inside a model, as PNGs.

``qkv inspect TEXT --layer N --out attn.png``: a heatmap of what each head attends to.
Up to ALL_HEADS_UP_TO tokens every head gets a panel; past that, one panel of the mean over heads
unless ``--head`` picks one, and ``--tokens A:B`` draws a window of the query/key positions. The
figure itself is bounded by qkv.plot (pixels and labels), so any text gives a PNG in seconds.

``qkv inspect TEXT --logit-lens --model GPT_DIR``: the logit lens (qkv.lens.logit_lens). Each
layer's residual stream, put through the final layer norm and the LM head, is a guess at the next
token; the picture has a row per layer (the embeddings at the bottom, the model's own output at the
top) and a column per position, and writes in each cell the top token, coloured by its probability.

``qkv inspect --patch CLEAN CORRUPT --model GPT_DIR``: activation patching
(qkv.lens.activation_patching). The two texts must have the same number of tokens. The metric is
the logit difference at the last position, logit[a] - logit[b], where a is the clean run's top next
token and b the corrupt run's. Each cell runs CORRUPT with the residual stream entering one block
(blocks.{layer}.hook_resid_pre) at one position replaced by the clean run's, and shows the effect
normalised as (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt): 1 = that activation alone
restores the clean answer, 0 = no effect.

Both need a decoder with an LM head (a GPT folder); an encoder (the packaged MiniLM) is a one-line
error.
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
    p = sub.add_parser("inspect", help="attention heatmap of one layer for a sentence (PNG); with a GPT folder "
                                       "also the logit lens (--logit-lens) and activation patching (--patch)")
    p.add_argument("text", metavar="TEXT", nargs="?", help="the text (not with --patch, which takes two)")
    p.add_argument("--layer", type=nonneg_int, default=0)
    p.add_argument("--head", type=nonneg_int, default=None,
                   help=f"one head (default: a panel per head up to {ALL_HEADS_UP_TO} tokens, their mean past that)")
    p.add_argument("--tokens", type=token_window, default=None, metavar="A:B",
                   help="draw query and key positions A..B-1 only (rows keep their weights over all keys)")
    p.add_argument("--logit-lens", action="store_true",
                   help="draw the logit lens instead: the top next token of every layer at every position, "
                        "coloured by its probability (needs a GPT --model)")
    p.add_argument("--patch", nargs=2, metavar=("CLEAN", "CORRUPT"),
                   help="draw activation patching instead: the effect of patching the clean run's residual "
                        "stream into the corrupt run, per layer and position, on the last position's logit "
                        "difference between the clean and the corrupt answer, normalised to 1 = clean "
                        "(needs a GPT --model; the texts must have the same number of tokens)")
    p.add_argument("--out", default=None,
                   help="the PNG (default attention.png, logit_lens.png with --logit-lens, patching.png with --patch)")
    p.add_argument("--model", help="a model folder (default: the packaged all-MiniLM-L6-v2)")
    return p


def out_path(path):
    """The --out file, checked before the model runs."""
    out = Path(path)
    if out.is_dir():  # before the model runs, not after
        raise CommandError(f"cannot write {out}: it is a folder (give a file name such as {out / 'attention.png'})")
    if not out.parent.is_dir():
        raise CommandError(f"cannot write {out}: folder {out.parent} does not exist")
    return out


def run(args):
    if args.patch is not None and args.logit_lens:
        raise CommandError("--logit-lens and --patch draw different pictures: give one of them")
    if args.patch is not None:
        if args.text is not None:
            raise CommandError(f"--patch takes the two texts CLEAN CORRUPT; got a third, {args.text!r}")
        return run_patch(args)
    if args.text is None:
        raise CommandError("give the TEXT to inspect (or --patch CLEAN CORRUPT)")
    if args.logit_lens:
        return run_logit_lens(args)
    return run_attention(args)


def load_lm(args, what):
    """The --model folder's model, which must be a decoder with an LM head (a GPT)."""
    from qkv.nn import GPT

    if args.model is None:
        raise CommandError(f"{what} needs a decoder with an LM head: give --model with a GPT folder (the packaged "
                           "all-MiniLM-L6-v2 is an encoder)")
    model = load_model(args.model)
    if not isinstance(model, GPT):
        raise CommandError(f"{what} needs a decoder with an LM head (a GPT folder); {args.model} holds a "
                           f"{type(model).__name__}, an encoder")
    return model


def _labels(model, tokens):
    from qkv.io.tokenizer import is_byte_level, token_labels

    return token_labels(tokens, byte_level=is_byte_level(model.tokenizer))


def _encode(model, text):
    """(ids (1, L) int64, token labels) of a text, within the model's context."""
    import numpy as np

    enc = model.tokenizer.encode(text)
    if len(enc.ids) > model.config.block_size:
        raise CommandError(f"the text has {len(enc.ids)} tokens; the model's context is {model.config.block_size}")
    return np.array([enc.ids], dtype=np.int64), _labels(model, enc.tokens)


def run_logit_lens(args):
    import numpy as np

    from qkv import lens
    from qkv._progress import progress_bar
    from qkv.plot import grid_heatmap

    (text,) = nonempty_texts([args.text])
    out = out_path(args.out or "logit_lens.png")
    with progress_bar(total=3, desc="logit lens", unit="step") as bar:
        bar.set_postfix_str("loading the model")
        model = load_lm(args, "--logit-lens")
        ids, labels = _encode(model, text)
        bar.update()
        bar.set_postfix_str(f"running the model on {ids.shape[1]} tokens")
        with user_input():
            _, cache = model.run_with_cache(ids, names=lambda name: name.endswith("hook_resid_pre")
                                            or name == "ln_final.hook_normalized" or name.endswith("hook_resid_post"))
            logits = lens.logit_lens(model, cache)[:, 0]  # (n_layer + 1, L, V)
        logits = np.asarray(logits.get() if hasattr(logits, "get") else logits, dtype=np.float64)
        top = logits.argmax(axis=-1)  # (n_layer + 1, L)
        z = logits - logits.max(axis=-1, keepdims=True)
        prob = 1.0 / np.exp(z).sum(axis=-1)  # the top token's softmax probability
        words = np.array(_labels(model, [model.tokenizer.id_to_token(int(t)) or "?" for t in top.ravel()]),
                         dtype=object).reshape(top.shape)
        bar.update()
        bar.set_postfix_str("drawing")
        n = model.config.n_layer
        rows = ["embeddings"] + [f"after block {i}" for i in range(n)]
        short = text if len(text) <= 40 else text[:39] + "…"
        out = grid_heatmap(prob, out, row_labels=rows, col_labels=labels, cell_text=words, vmin=0.0, vmax=1.0,
                           colorbar_label="probability of the top token", xlabel="input token (the guess is for "
                           "the token after it)", ylabel="residual stream read out", title=f"logit lens: {short!r}")
        bar.update()
    progress(f"wrote {out} ({ids.shape[1]} tokens, {n + 1} rows: the embeddings and each block)")
    return 0


def run_patch(args):
    import numpy as np

    from qkv import lens
    from qkv._progress import progress_bar
    from qkv.plot import grid_heatmap

    clean_text, corrupt_text = nonempty_texts(args.patch)
    out = out_path(args.out or "patching.png")
    with progress_bar(total=3, desc="patching", unit="step") as bar:
        bar.set_postfix_str("loading the model")
        model = load_lm(args, "--patch")
        clean, clean_labels = _encode(model, clean_text)
        corrupt, corrupt_labels = _encode(model, corrupt_text)
        if clean.shape != corrupt.shape:
            raise CommandError(f"--patch: CLEAN has {clean.shape[1]} tokens and CORRUPT {corrupt.shape[1]}; "
                               "patching position by position needs the same number")
        bar.update()
        L, n = clean.shape[1], model.config.n_layer
        bar.set_postfix_str(f"{n} layers x {L} positions = {n * L} patched runs")

        def last(logits):
            return np.asarray(logits.get() if hasattr(logits, "get") else logits, dtype=np.float64)[0, -1]  # (V,)

        with user_input():
            a, b = int(last(model(clean)).argmax()), int(last(model(corrupt)).argmax())
            if a == b:
                word = _labels(model, [model.tokenizer.id_to_token(a) or "?"])[0]
                raise CommandError(f"--patch: both texts make the model predict the same next token ({word!r}), "
                                   "so there is no logit difference to restore; change CORRUPT so that the "
                                   "answer changes")

            def logit_diff(logits):
                z = last(logits)
                return z[a] - z[b]

            ld_clean, ld_corrupt = logit_diff(model(clean)), logit_diff(model(corrupt))
            effect = lens.activation_patching(model, clean, corrupt, logit_diff, names="hook_resid_pre")
        effect = (effect - ld_corrupt) / (ld_clean - ld_corrupt)  # (n_layer, L): 0 = corrupt, 1 = clean
        bar.update()
        bar.set_postfix_str("drawing")
        words = _labels(model, [model.tokenizer.id_to_token(t) or "?" for t in (a, b)])
        cols = [c if c == d else f"{c}/{d}" for c, d in zip(clean_labels, corrupt_labels)]
        lim = max(1.0, float(np.abs(effect).max()))
        out = grid_heatmap(effect, out, row_labels=[f"resid_pre {i}" for i in range(n)], col_labels=cols,
                           cell_text=[[f"{e:.2f}" for e in row] for row in effect], cmap="RdBu", vmin=-lim,
                           vmax=lim, colorbar_label="patching effect (1 = clean, 0 = corrupt)",
                           xlabel="position (clean/corrupt where they differ)",
                           ylabel="residual stream patched (into block)",
                           title=f"activation patching: logit['{words[0]}'] - logit['{words[1]}'] at the last "
                                 f"position: clean {ld_clean:.2f}, corrupt {ld_corrupt:.2f}")
        bar.update()
    progress(f"wrote {out} ({n} layers x {L} positions; clean answer '{words[0]}', corrupt '{words[1]}')")
    return 0


def run_attention(args):
    import numpy as np

    from qkv._progress import progress_bar
    from qkv.io.tokenizer import is_byte_level, token_labels

    (text,) = nonempty_texts([args.text])
    out = out_path(args.out or "attention.png")
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
