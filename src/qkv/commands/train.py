"""``qkv train --text FILE --out DIR``: teach a GPT a text on qkv's kernels (qkv.train has the loop).

Progress (loss, tokens/s, ms/step) and the evaluations go to stderr; the generated sample at the end
goes to stdout. DIR ends up a GPT-2 folder that ``qkv generate --model DIR`` and ``qkv inspect
--model DIR`` read, plus the state ``--resume`` continues from, the loss curve (loss.png) and the
sample (sample.txt). Bad input (an empty or binary file, a text shorter than a block, a folder
that cannot be written, a loss that turns NaN) ends as one line, exit 2, with the last good
checkpoint kept.
"""

import argparse

from qkv.cli import CommandError, nonneg_int, positive_int, user_input


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def add_parser(sub):
    from qkv.train import PRESETS

    p = sub.add_parser("train", help="train a GPT on a text file (char or byte-level BPE tokens)")
    p.add_argument("--text", metavar="FILE",
                   help="a UTF-8 text file (default: this Python's standard library sources, about 1 MB)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the model folder to write (new, empty or a run to --resume)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model and schedule: baby (nanoGPT's CPU baby GPT, the default), char (shakespeare-char), "
                        "small (GPT-2 small shapes)")
    p.add_argument("--steps", type=positive_int, help="AdamW steps in the whole run")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--block-size", type=positive_int, help="tokens per window (also the model's positions)")
    p.add_argument("--lr", type=_positive_float, help="peak learning rate (cosine schedule with warm-up)")
    p.add_argument("--tokenizer", help="char, or bpe:N for a byte-level BPE of N tokens trained on the text")
    p.add_argument("--eval-interval", type=positive_int, help="steps between evaluations and checkpoints")
    p.add_argument("--seed", type=nonneg_int, help="initial weights and batches (default 0)")
    p.add_argument("--sample-tokens", type=nonneg_int, help="tokens of the sample generated at the end (default 300)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    return p


def run(args):
    from qkv.train import Settings, TrainError, train

    overrides = dict(steps=args.steps, batch_size=args.batch_size, block_size=args.block_size, lr=args.lr,
                     tokenizer=args.tokenizer, eval_interval=args.eval_interval, seed=args.seed, text=args.text,
                     device=args.device, sample_tokens=args.sample_tokens)
    try:
        with user_input():
            if args.resume:
                result = train(None, args.out, resume=True, preset=args.preset, **overrides)
            else:
                overrides = {k: v for k, v in overrides.items() if v is not None}
                if overrides.get("lr") is not None:  # a lower peak keeps min_lr at a tenth of it
                    overrides.setdefault("min_lr", overrides["lr"] / 10)
                result = train(Settings.from_preset(args.preset, **overrides), args.out)
    except TrainError as exc:
        raise CommandError(str(exc)) from None
    if result["sample"]:
        print(result["sample"])
    return 0
