"""``qkv generate --model DIR --prompt TEXT``: text from a GPT-2 folder, streamed token by token."""

import sys
import time

import numpy as np

from qkv.cli import CommandError
from qkv.commands._models import load_model, progress


def add_parser(sub):
    p = sub.add_parser("generate", help="generate text with a GPT-2 model folder (KV cache)")
    p.add_argument("--model", required=True, help="a Hugging Face GPT-2 folder (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None, help="1 = greedy")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    return p


def run(args):
    from qkv.nn import GPT

    if not args.prompt.strip():
        raise CommandError("the prompt is empty")
    model = load_model(args.model)
    if not isinstance(model, GPT):
        raise CommandError(f"{args.model} is not a GPT-2 model folder")
    if model.tokenizer is None:
        raise CommandError(f"{args.model} has no tokenizer.json")
    ids = np.array([model.tokenizer.encode(args.prompt).ids], dtype=np.int64)
    t0 = time.perf_counter()
    try:
        out = model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, seed=args.seed)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    dt = time.perf_counter() - t0
    print(model.tokenizer.decode(out[0].tolist()))
    n = args.max_new_tokens
    progress(f"{n} tokens in {dt:.2f} s ({n / dt:.1f} tokens/s)" if n else "no new tokens")
    sys.stdout.flush()
    return 0
