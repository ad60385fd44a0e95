"""What the side-by-side benchmark scripts share: interleaved timing, the facts every result
carries, the per-workload timing tables, and writing ``<out>.json`` and ``<out>.md``.

Used by foundation_cpu.py, backward_cpu.py and models_cpu.py (and attention_cpu.py for the
writing). One place for "what does a results file say about the machine", so every committed
table names the same things: date, CPU, thread counts, qkv's SIMD level, library versions, the
BLAS kernels loaded (threadpoolctl) and the environment variables that move the figures.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import qkv
from qkv._bench import ENV_KEYS, cpu_model
from qkv.commands.info import blas_info


def _call_seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def decode_step_seconds(steps):
    """A ``seconds`` for interleaved_medians whose rows may be a (long, short) pair of calls: the
    difference of their times over ``steps`` (the decode steps the long call makes beyond the short
    one), so prompt processing cancels out; a plain call is timed whole."""
    def seconds(fn):
        if isinstance(fn, tuple):
            t0 = time.perf_counter()
            fn[0]()
            t1 = time.perf_counter()
            fn[1]()
            t2 = time.perf_counter()
            return ((t1 - t0) - (t2 - t1)) / steps
        return _call_seconds(fn)
    return seconds


def interleaved_medians(rows, rounds, seconds=_call_seconds):
    """rows: {workload: {implementation: fn}}. One warm-up call each, then ``rounds`` rounds that run
    every fn in turn (so all see the same machine state); {workload: {implementation: median s}}.
    ``seconds(fn)`` times one call (a script may time something else than one plain call)."""
    times = {name: {impl: [] for impl in impls} for name, impls in rows.items()}
    for impls in rows.values():
        for fn in impls.values():
            seconds(fn)
    for _ in range(rounds):
        for name, impls in rows.items():
            for impl, fn in impls.items():
                times[name][impl].append(seconds(fn))
    return {name: {impl: statistics.median(ts) for impl, ts in impls.items()} for name, impls in times.items()}


def machine_meta(rounds, **extra):
    """The facts a results file carries. torch (and transformers) are reported when the script imported them."""
    torch = sys.modules.get("torch")
    transformers = sys.modules.get("transformers")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "qkv_threads": qkv.get_num_threads(),
        "qkv_simd": qkv._config.simd_name(),
        "numpy": np.__version__,
        "torch": None if torch is None else torch.__version__,
        "torch_threads": None if torch is None else torch.get_num_threads(),
        **({"transformers": transformers.__version__} if transformers is not None else {}),
        "blas": [{k: b.get(k) for k in ("library", "version", "kernel", "threads")} for b in blas_info()],
        "env": {k: os.environ.get(k) for k in ENV_KEYS},  # None: unset
        "rounds": rounds,
        **extra,
    }


def machine_line(meta):
    """One Markdown paragraph with machine_meta's facts."""
    blas = ", ".join(f"{b['library']} {b['version']} {b['kernel']}" for b in meta["blas"])
    env = {k: v for k, v in meta["env"].items() if v is not None}
    return (f"{meta['machine']}, {meta['cpus']} CPUs, qkv {meta['qkv_threads']} threads ({meta['qkv_simd']}), "
            f"NumPy {meta['numpy']}, torch {meta['torch']} ({meta['torch_threads']} threads)"
            + (f", transformers {meta['transformers']}" if "transformers" in meta else "")
            + f". BLAS: {blas}. Env: {env or 'no overrides'}. Median of {meta['rounds']} interleaved rounds.")


def timing_tables(med):
    """Markdown lines: a table per workload of interleaved_medians' result, each implementation's time
    and its ratio to the "qkv" row."""
    lines = []
    for name, impls in med.items():
        base = impls["qkv"]
        lines += [f"## {name}", "", "| implementation | time | relative to qkv |", "|---|---|---|"]
        for impl, t in impls.items():
            lines.append(f"| {impl} | {t * 1e3:.3f} ms | {t / base:.2f}x |")
        lines.append("")
    return lines


def cli(doc, rounds, out):
    """The command line of a side-by-side script: --rounds (default ``rounds``) and --out (default
    ``out``), described by the first line of the script's docstring ``doc``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--out", default=out)
    return ap.parse_args()


def side_by_side(title, rows, rounds):
    """Time ``rows`` (interleaved_medians), then the facts of the machine; returns (med, meta, lines),
    lines the head of the results file: "# title (date)", machine_line and timing_tables."""
    med = interleaved_medians(rows, rounds)
    meta = machine_meta(rounds)
    return med, meta, [f"# {title} ({meta['date']})", "", machine_line(meta), ""] + timing_tables(med)


def write(out, text, payload):
    """Print the Markdown ``text``, then write it to ``<out>.md`` and ``payload`` to ``<out>.json``."""
    print(text)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(payload, f, indent=2)
    with open(out + ".md", "w") as f:
        f.write(text)
