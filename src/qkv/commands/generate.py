"""``qkv generate --model DIR --prompt TEXT``: text from a GPT-2 folder, streamed token by token.

One prompt is printed as it grows (the whole sequence is decoded at each step and the new suffix
printed, so a character split across byte-level BPE tokens comes out whole). Several --prompt run as
one left-padded batch and are printed when done, one paragraph each. Rows stop at the model's
eos token (generation_config.json) or after --max-new-tokens. Speeds go to stderr: prefill (the
prompt tokens, through the first new token) and decode (each later token) separately.
"""

import os
import sys
import time

import numpy as np

from qkv.cli import CommandError, nonneg_int, positive_int
from qkv.commands._models import load_model, progress


def add_parser(sub):
    p = sub.add_parser("generate", help="generate text with a GPT-2 model folder (KV cache)")
    p.add_argument("--model", required=True, help="a Hugging Face GPT-2 folder (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--prompt", required=True, action="append",
                   help="the text to continue; give it several times for a batch")
    p.add_argument("--max-new-tokens", type=nonneg_int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=positive_int, default=None, help="1 = greedy")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=nonneg_int, default=None)
    p.add_argument("--quantize", choices=("bf16", "int8"), default=None,
                   help="store the weights in bfloat16 or 8-bit blocks (faster decode, see qkv.quant)")
    return p


class TextStream:
    """Prints a growing token sequence as text: decode all of it, print what is new. Text ending in
    U+FFFD (the first bytes of a multi-byte character) waits for the tokens that complete it."""

    def __init__(self, tokenizer, file):
        self.tokenizer, self.file, self.shown = tokenizer, file, ""

    def update(self, ids, final=False):
        text = self.tokenizer.decode(list(ids))
        if text.endswith("\ufffd") and not final:
            return
        keep = len(os.path.commonprefix([self.shown, text]))  # what is on screen already
        if len(text) > keep:
            print(text[keep:], end="", file=self.file, flush=True)
        self.shown = text


def _rate(n, seconds):
    return f"{n} tokens in {seconds:.3f} s ({n / seconds:.1f} tokens/s)" if seconds > 0 else f"{n} tokens"


def run(args):
    from qkv.nn import GPT

    if any(not p.strip() for p in args.prompt):
        raise CommandError("the prompt is empty")
    model = load_model(args.model)
    if not isinstance(model, GPT):
        raise CommandError(f"{args.model} is not a GPT-2 model folder")
    if args.quantize:
        model.quantize(args.quantize)
    if model.tokenizer is None:
        raise CommandError(f"{args.model} has no tokenizer.json")
    rows = [model.tokenizer.encode(p).ids for p in args.prompt]
    if any(not r for r in rows):
        raise CommandError("a prompt encodes to no tokens")
    n_prompt = sum(len(r) for r in rows)
    try:
        steps = model.generate_stream(rows, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                      top_p=args.top_p, seed=args.seed)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    eos = model.eos_token_id
    eos = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    live = np.ones(len(rows), dtype=bool)  # rows that have not produced their eos
    stream = TextStream(model.tokenizer, sys.stdout) if len(rows) == 1 else None
    if stream:
        stream.update(rows[0])
    times, counts = [], []  # per step: seconds inside the model, tokens it made
    while True:
        t0 = time.perf_counter()
        new = next(steps, None)
        if new is None:
            break
        times.append(time.perf_counter() - t0)
        counts.append(int(live.sum()))
        for r in np.flatnonzero(live):
            rows[r].append(int(new[r]))
            live[r] = int(new[r]) not in eos
        if stream:
            stream.update(rows[0])
    if stream:
        stream.update(rows[0], final=True)
        print()
    else:
        print("\n\n".join(model.tokenizer.decode(r) for r in rows))
    if not times:
        progress("no new tokens")
    else:
        msg = f"prefill: {_rate(n_prompt, times[0])}"
        if len(times) > 1:
            msg += f"; decode: {_rate(sum(counts[1:]), sum(times[1:]))}"
        progress(msg)
    sys.stdout.flush()
    return 0
