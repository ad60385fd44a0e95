"""``qkv embed TEXT...`` (or ``--file FILE``, one text a line): sentence embeddings
(all-MiniLM-L6-v2 by default), with a progress bar over many texts when stderr is a terminal.

``qkv embed --input FILE --output OUT``: a whole corpus into OUT/embeddings.npy, streaming and
resumable (re-run the same command after a kill), on this machine or a Dask cluster (``--dask``);
the pipeline is qkv.corpus's.
"""

import json
import sys
from pathlib import Path

from qkv.cli import CommandError, positive_int, user_input
from qkv.commands._models import load_encoder, nonempty_texts, progress

CHUNK = 128  # texts per Encoder.embed call: one progress-bar step (embed sorts and batches within it)


def add_parser(sub):
    p = sub.add_parser("embed", help="sentence embeddings of TEXTs (mean-pooled, L2-normalised)")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--file", metavar="FILE", help="also embed every non-blank line of FILE ('-' reads stdin)")
    p.add_argument("--model", help="a BERT-family model folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--json", action="store_true", help="print the full vectors as JSON")
    p.add_argument("--quantize", choices=("bf16", "int8"), default=None,
                   help="store the weights in bfloat16 or 8-bit blocks (see qkv.quant)")
    c = p.add_argument_group("a corpus (--input FILE --output OUT)")
    c.add_argument("--input", metavar="FILE", help="embed every item of FILE (one text a line, or JSON Lines with --field)")
    c.add_argument("--output", metavar="OUT", help="the folder for embeddings.npy, manifest.json, ids.jsonl")
    c.add_argument("--field", metavar="NAME", help="FILE is JSON Lines; the text is in this field")
    c.add_argument("--id-field", metavar="NAME", default="id", help="JSON Lines: the items' id field, kept in "
                   "OUT/ids.jsonl when every item has one (default: id)")
    c.add_argument("--skip-empty", action="store_true", help="skip blank items (default: embed them as the empty text)")
    c.add_argument("--errors", choices=("strict", "replace"), default="strict",
                   help="invalid UTF-8: an error naming the line (strict, the default), or read it as U+FFFD")
    c.add_argument("--overwrite", action="store_true", help="replace an OUT that holds another job")
    c.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass (default: 32)")
    c.add_argument("--chunk-size", type=positive_int, default=None,
                   help="items per chunk: the unit of work and of resume, sorted by length inside (default: 1024)")
    c.add_argument("--dask", metavar="SPEC", help="local:N (N worker processes here) or a scheduler address "
                   "tcp://HOST:8786; needs qkv[dask]")
    return p


def run_corpus(args):
    """--input FILE --output OUT: qkv.corpus.embed_corpus, with a summary line on stderr."""
    import time

    from qkv import corpus
    from qkv.io import find_minilm

    if args.texts or args.file:
        raise CommandError("--input embeds a whole file into --output; give TEXTs/--file or --input, not both")
    if not args.output:
        raise CommandError("--input needs --output OUT (a folder for embeddings.npy)")
    if args.quantize:  # the workers and a resumed run would have to quantize alike: not done yet
        raise CommandError("--quantize is for TEXT/--file; --input embeds with the float32 weights")
    if args.dask:
        try:
            from qkv.corpus_dask import parse_spec
        except ImportError:
            raise CommandError('--dask needs Dask: pip install "qkv[dask]"') from None
        with user_input():
            parse_spec(args.dask)
    try:
        folder = args.model or find_minilm()
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None
    model = load_encoder(folder)
    t0 = time.perf_counter()
    with user_input():
        s = corpus.embed_corpus(model, args.input, args.output, batch_size=args.batch_size, field=args.field,
                                id_field=args.id_field, skip_empty=args.skip_empty, errors=args.errors,
                                chunk_rows=args.chunk_size or corpus.CHUNK_ROWS, overwrite=args.overwrite,
                                model_name="all-MiniLM-L6-v2" if args.model is None else Path(folder).name,
                                model_folder=folder, dask=args.dask, progress=True, log=progress)
    dt = time.perf_counter() - t0
    resumed = f", {s['resumed_chunks']} of {s['chunks']} chunks were already done" if s["resumed_chunks"] else ""
    progress(f"embedded {s['count']} items ({s['dims']} dims) into {s['out']}/embeddings.npy "
             f"in {dt:.1f} s{resumed}")
    return 0


def read_lines(path):
    """The non-blank lines of a UTF-8 text file, or of stdin for '-'."""
    with user_input():  # a missing file, a folder, bytes that are not UTF-8
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise CommandError(f"{path} has no non-blank lines")
    return lines


def run(args):
    import numpy as np

    from qkv._progress import progress_bar

    if args.input or args.output:
        if not args.input:
            raise CommandError("--output is for a corpus: give --input FILE too")
        return run_corpus(args)
    texts = list(args.texts) + (read_lines(args.file) if args.file else [])
    texts = nonempty_texts(texts)
    model = load_encoder(args.model) if not args.quantize else load_encoder(args.model).quantize(args.quantize)
    with progress_bar(total=len(texts), desc="embed", unit="text") as bar:
        parts = []
        for s in range(0, len(texts), CHUNK):
            parts.append(model.embed(texts[s:s + CHUNK]))
            bar.update(len(parts[-1]))
    emb = np.concatenate(parts)  # (N, C)
    if args.json:
        print(json.dumps({"texts": texts, "embeddings": emb.round(7).tolist()}))
    else:
        for t, e in zip(texts, emb):
            head = " ".join(f"{v:+.4f}" for v in e[:6])
            print(f"[{head} ... ] ({e.size} dims)  {t}")
    return 0
