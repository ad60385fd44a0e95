"""Looking inside, side by side: qkv's run_with_cache vs TransformerLens's on the same GPT-2 weights.

    pip install transformer-lens   # the benchmark's environment only; qkv never imports it
    python benchmarks/hooks_cpu.py [--rounds 5] [--threads 2] [--out benchmarks/results/hooks_cpu]

GPT-2 small shapes (12 layers, 12 heads of 64, 768 wide, 50257 tokens), random weights written once
as a Hugging Face GPT-2 folder that both load (qkv: GPT.from_pretrained; TransformerLens 4.x:
TransformerBridge.boot_transformers(folder, hf_model=..., tokenizer=...), raw weights, no
compatibility mode), one sequence of L = 256 tokens, float32, one process, interleaved rounds,
medians. TransformerLens runs with torch's autograd off (torch.set_grad_enabled(False), as its
tutorials do), which only helps it; one row shows its default, autograd on (TransformerLens issue
#746, "run_with_cache() uses a ton of memory").

Rows:
- run_with_cache, every hook: qkv's default names (every point but attn.hook_result: 27 per layer
  + 3) against TransformerLens caching the same names (names_filter), and TransformerLens's own
  default (every hook point it has, 93 for 2 layers: aliases like hook_in/hook_out, hook_scale,
  hook_attn_scores as well), and the same with autograd on;
- forward, no hooks: qkv's GPT now against the GPT class of the commit before hooks existed
  (loaded from git), on the same weights: what the hook check costs the fast path; also the cost
  of that check alone (timeit), as a fraction of the forward.

Peak memory: the extra resident set of one call after a warm-up call, in a fresh child process per
library (benchmarks/_memory.py), the returned cache included. The children run with
MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ at 128 KiB, so memory the warm-up freed goes back
to the system and cannot hide the measured call's needs (glibc's adaptive threshold would keep
blocks up to 32 MiB each for reuse, for both libraries).

Before timing, every cached activation of qkv is compared with TransformerLens's of the same name
(max abs difference); the figures are only written if they agree to 1e-3.
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import timeit

import numpy as np

import qkv
from qkv.nn import GPT, hook_names

from _memory import peak_memory  # benchmarks/_memory.py
from _report import interleaved_medians, machine_line, machine_meta, write  # benchmarks/_report.py

import torch  # noqa: E402  (the baseline; this script is not part of the test suite)
import transformers  # noqa: E402
import transformer_lens  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BEFORE = "ea9684e^"  # the commit before hook points: its GPT is the "before" of the no-hook forward


def tokenizer():
    """A stand-in tokenizer (TransformerBridge wants one; the ids are made up, nothing is downloaded)."""
    from tokenizers import Tokenizer, models

    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")))


def write_folder(path):
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval().save_pretrained(path)


def boot_tl(path):
    hf = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    return TransformerBridge.boot_transformers(path, hf_model=hf, tokenizer=tokenizer())


def gpt_before():
    """The GPT class as it was before hook points (git show BEFORE:src/qkv/nn/gpt.py), or None."""
    try:
        src = subprocess.run(["git", "show", f"{BEFORE}:src/qkv/nn/gpt.py"], capture_output=True, text=True,
                             check=True, cwd=HERE).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    f = tempfile.NamedTemporaryFile("w", suffix="_gpt_before.py", delete=False)
    f.write(src)
    f.close()
    spec = importlib.util.spec_from_file_location("gpt_before", f.name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.GPT


MEMORY_SETUP = {
    "qkv": r"""
import qkv
from qkv.nn import GPT
qkv.set_num_threads(threads)
model = GPT.from_pretrained(os.environ["QKV_HOOKS_FOLDER"])
ids = np.random.default_rng(0).integers(0, 50257, (1, L))
call = lambda: model.run_with_cache(ids)
call()
""",
    "tl_same": r"""
import torch, transformers
sys.path.insert(0, os.environ["QKV_HOOKS_BENCH"])
from hooks_cpu import boot_tl
torch.set_num_threads(threads)
torch.set_grad_enabled(False)
model = boot_tl(os.environ["QKV_HOOKS_FOLDER"])
names = os.environ["QKV_HOOKS_NAMES"].split(",")
ids = torch.from_numpy(np.random.default_rng(0).integers(0, 50257, (1, L)))
call = lambda: model.run_with_cache(ids, names_filter=names)
call()
""",
    "tl_all": r"""
import torch, transformers
sys.path.insert(0, os.environ["QKV_HOOKS_BENCH"])
from hooks_cpu import boot_tl
torch.set_num_threads(threads)
torch.set_grad_enabled(False)
model = boot_tl(os.environ["QKV_HOOKS_FOLDER"])
ids = torch.from_numpy(np.random.default_rng(0).integers(0, 50257, (1, L)))
call = lambda: model.run_with_cache(ids)
call()
""",
    "tl_grad": r"""
import torch, transformers
sys.path.insert(0, os.environ["QKV_HOOKS_BENCH"])
from hooks_cpu import boot_tl
torch.set_num_threads(threads)
model = boot_tl(os.environ["QKV_HOOKS_FOLDER"])
ids = torch.from_numpy(np.random.default_rng(0).integers(0, 50257, (1, L)))
call = lambda: model.run_with_cache(ids)
call()
""",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="qkv's and torch's threads (default 2)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "hooks_cpu"))
    args = ap.parse_args()
    L, threads = 256, args.threads
    qkv.set_num_threads(threads)
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    folder = tempfile.mkdtemp(prefix="gpt2_random_")
    write_folder(folder)
    q = GPT.from_pretrained(folder)
    tl = boot_tl(folder)
    names = [n for n in hook_names(q) if not n.endswith("attn.hook_result")]
    ids = np.random.default_rng(0).integers(0, 50257, (1, L))
    t_ids = torch.from_numpy(ids)

    # the same activations on both sides
    q_logits, q_cache = q.run_with_cache(ids)
    t_logits, t_cache = tl.run_with_cache(t_ids, names_filter=names)
    diffs = {n: float(np.abs(q_cache[n] - t_cache[n].numpy()).max()) for n in names}
    diffs["logits"] = float(np.abs(q_logits - t_logits.numpy()).max())
    worst = max(diffs, key=diffs.get)
    print(f"largest difference from TransformerLens: {worst} {diffs[worst]:.2e}", file=sys.stderr)
    if diffs[worst] > 1e-3:
        sys.exit(f"qkv and TransformerLens disagree on {worst}: {diffs[worst]:.3e}")
    n_tl_all = len(tl.run_with_cache(t_ids)[1])
    del q_cache, t_cache, t_logits

    Before = gpt_before()
    q_before = Before.from_pretrained(folder) if Before is not None else None
    cache_row = {
        "qkv": lambda: q.run_with_cache(ids),
        "TransformerLens, the same names": lambda: tl.run_with_cache(t_ids, names_filter=names),
        f"TransformerLens, all {n_tl_all} hook points": lambda: tl.run_with_cache(t_ids),
        f"TransformerLens, all {n_tl_all} hook points, autograd on": lambda: _with_grad(tl, t_ids),
    }
    forward_row = {"qkv": lambda: q(ids)}
    if q_before is not None:
        forward_row["qkv before hooks"] = lambda: q_before(ids)
    load_before = os.getloadavg()[0]
    med = interleaved_medians({f"run_with_cache, every hook, L={L}": cache_row,
                               f"forward without hooks, L={L}": forward_row}, args.rounds)
    load_after = os.getloadavg()[0]
    check_s = min(timeit.repeat("m._hook_run is not None", globals={"m": q}, number=100_000, repeat=5)) / 100_000

    os.environ.update(QKV_HOOKS_FOLDER=folder, QKV_HOOKS_BENCH=HERE, QKV_HOOKS_NAMES=",".join(names),
                      MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    mem = {k: peak_memory(setup, k, L, threads) for k, setup in MEMORY_SETUP.items()}  # MiB, or None
    for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        del os.environ[k]
    kept = {id(a): a for a in q.run_with_cache(ids)[1].values()}  # resid_post of i is resid_pre of i + 1
    cache_mib = sum(a.nbytes for a in kept.values()) / 2**20

    tl_version = getattr(transformer_lens, "__version__", None) or _version("transformer-lens")
    meta = machine_meta(args.rounds, length=L, load_average=[load_before, load_after], transformer_lens=tl_version)
    (c_name, c), (f_name, f) = med.items()
    tq, ts, ta = c["qkv"], c["TransformerLens, the same names"], c[f"TransformerLens, all {n_tl_all} hook points"]
    tg = c[f"TransformerLens, all {n_tl_all} hook points, autograd on"]
    fwd, fwd_before = f["qkv"], f.get("qkv before hooks")
    lines = [f"# Looking inside: run_with_cache vs TransformerLens, CPU, float32 ({meta['date']})", "",
             machine_line(meta) + f" TransformerLens {meta['transformer_lens']} (TransformerBridge, grad off). "
             f"The machine is shared: load average {load_before:.1f} before the timings and {load_after:.1f} "
             "after, on 2 cores, so every time here is inflated and noisy.", "",
             f"GPT-2 small shapes, random weights, one sequence of {L} tokens. qkv caches {len(names)} activations "
             f"({cache_mib:.0f} MiB); the largest difference from TransformerLens's, name by name: "
             f"{diffs[worst]:.1e} ({worst}).", "",
             f"## {c_name}", "", "| implementation | time | qkv speed-up | peak extra memory | qkv's share |",
             "|---|---|---|---|---|"]
    for impl, t, m in [("qkv", tq, mem["qkv"]), ("TransformerLens, the same names", ts, mem["tl_same"]),
                       (f"TransformerLens, all {n_tl_all} hook points", ta, mem["tl_all"]),
                       (f"TransformerLens, all {n_tl_all} hook points, autograd on (its default)", tg,
                        mem["tl_grad"])]:
        share = f"{mem['qkv'] / m:.2f}" if m and mem["qkv"] is not None else "n/a"
        lines.append(f"| {impl} | {t * 1e3:.0f} ms | {t / tq:.2f}x | "
                     f"{'n/a' if m is None else f'{m:.0f} MiB'} | {share} |")
    lines += ["", f"## {f_name}", "", "| implementation | time |", "|---|---|"]
    lines.append(f"| qkv | {fwd * 1e3:.0f} ms |")
    if fwd_before is not None:
        lines.append(f"| qkv before hooks ({BEFORE}) | {fwd_before * 1e3:.0f} ms |")
    lines += ["", f"The hook check alone: {check_s * 1e9:.0f} ns a forward, {check_s / fwd * 100:.6f}% of it"
              + (f"; measured end to end: {(fwd / fwd_before - 1) * 100:+.1f}% (within the noise of this machine)"
                 if fwd_before is not None else "") + ".", ""]
    payload = {"meta": meta, "medians_s": med, "peak_extra_mib": mem, "cache_mib": cache_mib,
               "hook_check_s": check_s, "max_abs_diff_vs_transformer_lens": diffs,
               "speedup_vs_tl_same_names": ts / tq, "speedup_vs_tl_all": ta / tq, "speedup_vs_tl_grad": tg / tq,
               "memory_share_vs_tl_same_names": None if not mem["tl_same"] else mem["qkv"] / mem["tl_same"],
               "no_hook_overhead": None if fwd_before is None else fwd / fwd_before - 1}
    write(args.out, "\n".join(lines), payload)


def _with_grad(model, ids):
    with torch.enable_grad():
        return model.run_with_cache(ids)


def _version(dist):
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
