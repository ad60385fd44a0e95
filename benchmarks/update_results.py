"""Re-measure the published figures and rewrite BENCHMARKS.md from them.

    python benchmarks/update_results.py            # measure (qkv bench + attention sweep + peak memory), then render
    python benchmarks/update_results.py --render   # only rewrite BENCHMARKS.md from benchmarks/results/*.json
    python benchmarks/update_results.py --bench    # re-measure only the qkv bench table, then render

Writes benchmarks/results/qkv_bench_cpu.{json,txt}, attention_throughput.{json,png},
attention_peakmem.json and BENCHMARKS.md at the repository root. Run it on a quiet machine:
the figures are medians, but other processes on the same cores still move them.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
PEAKMEM_L = (1024, 2048, 4096, 8192)
PEAKMEM_NUMPY_MAX_L = 2048

PEAKMEM_CHILD = r"""
import resource, sys, numpy as np
from qkv import _bench
L, name = int(sys.argv[1]), sys.argv[2]
impl = _bench.Impl(name)
case = _bench.Attention(np.random.default_rng(0), L, L, True, "attention_causal", "")
with impl.context():
    fn = case.build(impl)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before * 1024, after * 1024)
"""


def measure_peakmem():
    """Peak RSS of one causal attention call (B=1, H=12, D=64, float32), each in a fresh process."""
    rows = []
    for name in ("cpu", "torch", "numpy"):
        for L in PEAKMEM_L:
            if name == "numpy" and L > PEAKMEM_NUMPY_MAX_L:
                continue
            r = subprocess.run([sys.executable, "-c", PEAKMEM_CHILD, str(L), name], capture_output=True, text=True)
            if r.returncode != 0:
                print(f"peakmem {name} L={L}: {r.stderr.strip().splitlines()[-1:]}")
                continue
            before, after = map(int, r.stdout.split())
            rows.append({"impl": name, "L": L, "rss_before": before, "rss_peak": after, "call_growth": after - before})
            print(f"peakmem {name:<6} L={L:5d} peak {after / 2**20:8.0f} MiB (+{(after - before) / 2**20:.0f} MiB in the call)")
    return rows


def measure(bench_only=False):
    os.makedirs(RESULTS, exist_ok=True)
    env = dict(os.environ)
    bench_json = os.path.join(RESULTS, "qkv_bench_cpu.json")
    out = subprocess.run([sys.executable, "-m", "qkv", "bench", "--json", bench_json], env=env, capture_output=True,
                         text=True)
    sys.stdout.write(out.stdout)
    if out.returncode not in (0, 1):
        sys.exit(out.stderr)
    with open(os.path.join(RESULTS, "qkv_bench_cpu.txt"), "w") as f:
        f.write(out.stdout.split("\nwrote ")[0] + "\n")
    if bench_only:
        return
    subprocess.run([sys.executable, os.path.join(HERE, "plot_attention.py")], env=env, check=True)
    with open(os.path.join(RESULTS, "attention_peakmem.json"), "w") as f:
        json.dump(measure_peakmem(), f, indent=2)


def _md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _t(s):
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def _x(v):
    return "-" if v is None else f"{v:.2f}x"


def training_section():
    """Markdown lines of the training section, from train_cpu*.json (benchmarks/train_cpu.py) and
    train_quality.json/.png (benchmarks/train_quality.py); empty when none was measured."""
    out = []
    runs = [(name, os.path.join(RESULTS, f"{name}.json")) for name in ("train_cpu", "train_cpu_1thread")]
    runs = [(name, path) for name, path in runs if os.path.exists(path)]
    if not runs and not os.path.exists(os.path.join(RESULTS, "train_quality.json")):
        return out
    out += ["## Training: one step (forward, backward, clipping, AdamW) against PyTorch eager", "",
            "`benchmarks/train_cpu.py`: `GPT.value_and_grad` + `clip_grad_norm` + `AdamW.step` against a "
            "nanoGPT-style `torch.nn` GPT from the same weights on the same batch, same thread count, "
            "interleaved rounds. *torch / qkv* is torch's step time over qkv's; % FMA peak is 6·N·tokens + "
            "attention FLOPs over the FMA peak measured in the same run. Peak MiB: the resident set's growth "
            "while the optimizer is built and 3 steps run, in a fresh process per implementation, over the "
            "process with the weights loaded.", ""]
    for name, path in runs:
        with open(path) as f:
            res = json.load(f)
        meta = res["meta"]
        peak = max(meta["fma_peak_before"]["gflops"], meta["fma_peak_after"]["gflops"])
        load = "/".join(f"{x:.1f}" for x in meta["load_average"])
        out += [f"{meta['qkv_threads']} thread{'s' if meta['qkv_threads'] > 1 else ''} for both, step time by the "
                f"{meta.get('clock', 'wall clock')}, median of {meta['rounds']} rounds, measured {meta['date']} "
                f"(load average {load} on {meta['cpus']} CPUs; FMA peak {peak:.0f} GFLOP/s"
                + (", measured by the wall clock under that load, so the % column overstates"
                   if meta.get("clock") == "process CPU time" else "") + "):", ""]
        rows = []
        mem = any("peak_mib" in r for v in res["results"].values() for r in v["impls"].values())
        for label, v in res["results"].items():
            for impl, r in v["impls"].items():
                ratio = "" if impl != "qkv" or v["speedup"] is None else f"**{v['speedup']:.2f}x**"
                target = "" if impl != "qkv" else f">= {v['target']}x"
                row = [label if impl == "qkv" else "", impl, f"{r['seconds'] * 1e3:.1f} ms", f"{r['gflops']:.1f}",
                       f"{100 * r['peak_fraction']:.0f}%", ratio, target]
                if mem:
                    row.append("-" if r.get("peak_mib") is None else f"{r['peak_mib']:.0f}")
                rows.append(row)
        out.append(_md_table(["model", "implementation", "step", "GFLOP/s", "% FMA peak", "torch / qkv", "target"]
                             + (["peak MiB"] if mem else []), rows))
        out.append("")
    q_path = os.path.join(RESULTS, "train_quality.json")
    if os.path.exists(q_path):
        with open(q_path) as f:
            q = json.load(f)
        meta, ev, sec = q["meta"], q["evals"], q["seconds"]
        last = {impl: ev[impl][-1][1] for impl in ev}
        out += ["### Training curves: the baby GPT, qkv and torch from the same initialisation and batches", "",
                f"`benchmarks/train_quality.py`, measured {meta['date']}: {meta['steps']} steps of the baby preset "
                f"on {meta['text_chars']:,} characters (vocabulary {meta['vocab']}), qkv and torch alternating "
                f"step by step on {meta['qkv_threads']} threads. Final validation loss qkv {last['qkv']:.4f}, torch "
                f"{last['torch']:.4f}; time of the steps qkv {sec['qkv']:.0f} s, torch {sec['torch']:.0f} s"
                + (" (measured before the step times above, on the qkv of that date)."
                   if runs and any(json.load(open(path))["meta"]["date"] > meta["date"] for _, path in runs) else "."),
                "",
                "![training loss of qkv and torch](benchmarks/results/train_quality.png)", ""]
    return out


def _result(name):
    """benchmarks/results/<name>.json as a dict, or None when that benchmark was not run."""
    path = os.path.join(RESULTS, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def llama_section():
    """Markdown lines of the Llama-layout section, from llama_cpu.json (benchmarks/llama_cpu.py);
    empty when it was not measured."""
    res = _result("llama_cpu")
    if res is None:
        return []
    meta = res["meta"]
    bound = res["bandwidth_bound_seconds_per_token"]
    load = meta.get("load_average")
    out = ["## Llama layout: SmolLM-135M-shaped forward and decode against transformers", "",
           "`benchmarks/llama_cpu.py`: `qkv.nn.Llama` and transformers' `LlamaForCausalLM` on the same random "
           "weights (30 layers, 576 wide, 9 query / 3 KV heads, SwiGLU 1536, vocab 49152, tied head; "
           f"{meta['parameters'] / 1e6:.1f}M parameters; max |logits difference| {meta['max_abs_logit_diff']:.1e}), "
           f"{meta['qkv_threads']} threads for both, median of {meta['rounds']} interleaved rounds, measured "
           f"{meta['date']}" + (f" (load average {'/'.join(f'{x:.1f}' for x in load)} on {meta['cpus']} CPUs)"
                                if load else f" on a shared, loaded machine ({meta['cpus']} CPUs)") + ". "
           f"Decode's memory-bandwidth bound: every weight read once per token, {4 * meta['parameters'] / 1e6:.0f} "
           f"MB at the {meta['read_bandwidth_gbs']:.1f} GB/s read bandwidth measured in the same run = "
           f"{bound * 1e3:.0f} ms/token; *bound / time* is that over the measured time.", ""]
    rows = []
    for name, impls in res["figures"].items():
        for impl, r in impls.items():
            frac = r.get("fraction_of_bandwidth_bound")
            rows.append([name if impl == "qkv" else "", impl,
                         f"{r['seconds'] * 1e3:.1f} ms" + ("/token" if frac is not None else ""),
                         f"**{r['qkv_speedup']:.2f}x**" if impl != "qkv" else "1.00x",
                         "-" if frac is None else f"{frac:.2f}"])
    out.append(_md_table(["workload", "implementation", "time", "its time / qkv's", "bound / time"], rows))
    out.append("")
    return out


def hooks_section():
    """Markdown lines of the Looking-inside section, from hooks_cpu.json and hooks_cpu_1thread.json
    (benchmarks/hooks_cpu.py); empty when neither was measured."""
    runs = [r for r in map(_result, ("hooks_cpu", "hooks_cpu_1thread")) if r is not None]
    if not runs:
        return []
    meta = runs[0]["meta"]
    out = ["## Looking inside: run_with_cache against TransformerLens (GPT-2 small, L = 256, float32)", "",
           "`benchmarks/hooks_cpu.py`: `GPT.run_with_cache` (every hook point but attn.hook_result) and "
           f"TransformerLens {meta['transformer_lens']}'s `run_with_cache` (TransformerBridge on the same random "
           "GPT-2 small weights written as a Hugging Face folder; autograd off unless said) in one process, "
           f"interleaved rounds, medians; every cached activation agrees to "
           f"{max(runs[0]['max_abs_diff_vs_transformer_lens'].values()):.0e}. Peak memory: the extra resident set "
           "of one call after a warm-up, in a child process, the returned cache included (qkv's cache holds "
           f"{min(r['cache_mib'] for r in runs):.0f} MiB, the logits 49 MiB). Measured on a shared machine "
           f"({meta['cpus']} CPUs): "
           + "; ".join(f"{r['meta']['qkv_threads']} thread{'s' * (r['meta']['qkv_threads'] != 1)} at {r['meta']['date']} under load average "
                       f"{r['meta']['load_average'][0]:.0f}-{r['meta']['load_average'][1]:.0f}" for r in runs)
           + "." + (" A load average above the CPU count inflates every time, qkv's (two thread pools that wait for "
                    "each other) more than torch's." if any(max(r['meta']['load_average']) > meta['cpus'] for r in runs)
                    else ""), ""]
    rows = []
    for r in runs:
        threads = r["meta"]["qkv_threads"]
        (cache_name, cache), (_, fwd) = r["medians_s"].items()
        mem = r["peak_extra_mib"]
        mems = [mem["qkv"], mem["tl_same"], mem["tl_all"], mem["tl_grad"]]
        for (impl, t), m in zip(cache.items(), mems):
            rows.append([f"{threads}" if impl == "qkv" else "", impl, f"{t * 1e3:.0f} ms",
                         "1.00x" if impl == "qkv" else f"**{t / cache['qkv']:.2f}x**",
                         "-" if m is None else f"{m:.0f} MiB",
                         "-" if m is None or mem["qkv"] is None else f"{mem['qkv'] / m:.2f}"])
        before = fwd.get("qkv before hooks")
        rows.append(["", "qkv forward without hooks (before hooks existed)",
                     f"{fwd['qkv'] * 1e3:.0f} ms" + (f" ({before * 1e3:.0f} ms)" if before else ""), "", "", ""])
    out.append(_md_table(["threads", "implementation", "time", "its time / qkv's", "peak extra memory",
                          "qkv's memory / its"], rows))
    fwd_s = list(runs[0]["medians_s"].values())[1]["qkv"]
    out += ["", f"With no hook active a forward checks one attribute ({runs[0]['hook_check_s'] * 1e9:.0f} ns, "
            f"{runs[0]['hook_check_s'] / fwd_s * 100:.0e} % of the forward); the end-to-end before/after "
            "difference is within this machine's noise.", ""]
    return out


def quant_section():
    """Markdown lines of the low-precision section, from quant_cpu.json (benchmarks/quant_cpu.py);
    empty when it was not measured."""
    res = _result("quant_cpu")
    if res is None:
        return []
    meta, fig = res["meta"], res["figures"]
    load = meta.get("load_average")
    out = ["## Low-precision weights: GPT-2 small decode and MiniLM with bf16 / int8 weights", "",
           "`benchmarks/quant_cpu.py`: qkv with float32, bf16 and int8 (Q8_0: 32 int8 + a float16 scale) weights, "
           "GPT-2-small-shaped random weights, greedy decode after a 32-token prompt (the median step), beside "
           "transformers float32 and with torch bfloat16 weights; "
           f"{meta['qkv_threads']} threads for both, median of {meta['rounds']} interleaved rounds, measured "
           f"{meta['date']}" + (f" (load average {'/'.join(f'{x:.1f}' for x in load)} on {meta['cpus']} CPUs)"
                                if load else "") + ". "
           f"The bound is the bytes one token reads (every weight once, tied head included, plus the KV cache) at "
           f"the {fig['read_bandwidth_gbs']:.1f} GB/s read bandwidth measured in the same rounds; *bound / time* "
           "is the comparable figure.", ""]
    base = fig["decode"]["qkv float32"]["ms_per_token"]
    rows = []
    for impl, r in fig["decode"].items():
        frac = r.get("fraction_of_bound")
        rows.append([impl, f"{r['ms_per_token']:.1f}",
                     f"{r['bytes_per_token'] / 1e6:.0f}" if "bytes_per_token" in r else "",
                     f"{frac:.2f}" if frac is not None else "", f"{base / r['ms_per_token']:.2f}x"])
    out += [_md_table(["decode", "ms/token", "MB read/token", "bound / time", "vs qkv float32"], rows), ""]
    if fig.get("embed"):
        rows = [[impl, f"{r['sentences_per_s']:.0f}", f"{r['speedup']:.2f}x"] for impl, r in fig["embed"].items()]
        out += [_md_table(["all-MiniLM-L6-v2, sentences of ~20 tokens, batches of 32", "sentences/s", "vs float32"],
                          rows), ""]
    if fig.get("peak_memory_mib"):
        rows = [[fmt, f"{r['model']:.0f} MiB", f"{r['vs_float32']:.2f}x", f"{r['process']:.0f} MiB"]
                for fmt, r in fig["peak_memory_mib"].items()]
        out += ["Peak memory: a child process loads the folder (float32: a Hugging Face folder; bf16/int8: "
                "written by save_pretrained, memory mapped) and generates 8 tokens.", "",
                _md_table(["weights", "model's share (over `import qkv`)", "vs float32", "whole process"], rows), ""]
    out += ["Targets (issue): bf16 <= 9 ms/token, int8 <= 5.5 ms/token, >= 80% of the bound, MiniLM int8 >= 1.3x "
            "float32, peak memory <= 0.55x (bf16) / 0.3x (int8). On AVX2 without VNNI/AVX512-BF16 the int8 kernel "
            "spends 4 instructions per 8 weights converting to float, which bounds it below the bandwidth.", ""]
    return out


def embed_corpus_section():
    """Markdown lines of the corpus-embedding section, from embed_corpus.json
    (benchmarks/embed_corpus.py); empty when it was not measured."""
    res = _result("embed_corpus")
    if res is None:
        return []
    meta, rows, acc = res["meta"], res["rows"], res["accuracy"]
    single, st = rows["qkv, 1 process x 2 threads"], rows["sentence-transformers encode, 2 torch threads"]
    dask = rows["qkv, --dask local:2 (2 processes x 1 thread)"]
    load = "/".join(f"{x:.1f}" for x in meta["load_average"])
    cut = (f" (the run asked for {meta['lines_asked']:,} and was stopped after {meta['lines']:,}: every round "
           "runs all four ways, so the figures cover the same lines)") if meta["lines"] < meta["lines_asked"] else ""
    out = ["## Embedding a corpus: `qkv embed --input` against sentence-transformers", "",
           f"`benchmarks/embed_corpus.py`: all-MiniLM-L6-v2 on {meta['lines']:,} lines{cut} of standard-library "
           "docstring sentences, batches of 32, the four ways taking turns on slices of the lines; measured "
           f"{meta['date']} on {meta['cpus']} CPUs under load average {load}, so the absolute items/s are low. "
           "qkv's time includes the whole job (scan, sorting, writing embeddings.npy, done marks); start-up "
           "(the Dask cluster, the multi-process pool) is timed apart.", ""]
    table = [[way, f"{r['items_per_s']:.1f}", f"{r['items_per_s'] / single['items_per_s']:.2f}x",
              "-" if "startup_seconds" not in r else f"{r['startup_seconds']:.0f} s"] for way, r in rows.items()]
    out.append(_md_table(["way", "items/s", "items/s vs qkv 1 process", "start-up"], table))
    out += ["", f"qkv 1 process / sentence-transformers encode: **{single['items_per_s'] / st['items_per_s']:.2f}x** "
            f"(goal 1.5x); Dask local:2 / qkv 1 process: **{dask['items_per_s'] / single['items_per_s']:.2f}x** "
            f"(goal within 10%). Same vectors: cosine qkv vs sentence-transformers >= "
            f"{acc['min_cosine_qkv_vs_st']:.7f} (max |diff| {acc['max_abs_diff_qkv_vs_st']:.1e}); Dask vs 1 "
            f"process max |diff| {acc['max_abs_diff_dask_vs_single']:.1e}.", ""]
    return out


def render():
    with open(os.path.join(RESULTS, "qkv_bench_cpu.json")) as f:
        bench = json.load(f)
    m, peak = bench["machine"], bench["fma_peak"]
    blas = "; ".join(f"{k}: {v}" for k, v in bench["blas_kernels"].items())
    alloc = m["allocator"]
    torch = m["torch"]["version"] if m.get("torch") else "not installed"
    out = ["# qkv benchmarks", "",
           "Measured with `python benchmarks/update_results.py` (it runs `qkv bench`, "
           "`benchmarks/plot_attention.py` and a peak-memory sweep, then writes this page from "
           "`benchmarks/results/*.json`). The asv suite tracks the same kernels over time: see README, "
           "*Tracking performance*.", "",
           "## Machine", "",
           f"- date: {m['date_utc']} UTC",
           f"- CPU: {m.get('cpu_model', m['machine'])}, {m['threads']} threads for qkv and torch, qkv SIMD level {m['simd']['in_use']}",
           f"- qkv {m['qkv']}, Python {m['python']}, NumPy {m['numpy']}, SciPy {m['scipy']}, torch {torch}",
           f"- BLAS that ran (threadpoolctl): {blas}",
           f"- environment: {', '.join(f'{k}={v}' for k, v in m.get('env', {}).items()) or 'no OMP/OpenBLAS overrides'}",
           f"- allocator: {alloc['libc']}, MALLOC_TRIM_THRESHOLD_={alloc['MALLOC_TRIM_THRESHOLD_']}, "
           f"MALLOC_MMAP_THRESHOLD_={alloc['MALLOC_MMAP_THRESHOLD_']}. qkv's calls reuse a preallocated `out=`; "
           "torch allocates each output (a fresh large output costs page faults on every call).",
           f"- FMA peak measured in the same run, at qkv's SIMD level ({peak['simd']}): **{peak['gflops']:.0f} "
           f"GFLOP/s** on {peak['threads']} threads, {peak['gflops_1thread']:.0f} on one (float32 FMA chains in "
           "registers, csrc/fma_peak.c; before/after the cases: "
           + "/".join(f"{g:.0f}" for g in peak["gflops_before_after"]) + ")"
           + ("; `qkv bench --quick`" if bench["quick"] else ""), "",
           "## Headline shapes (`qkv bench`), float32", ""]
    from qkv._bench import backends_absent

    absent = backends_absent(bench)
    rows = []
    for r in bench["results"]:
        if r["backend"] in absent:
            continue
        if r["status"] != "ok":
            rows.append([r["case"], r["shape"], r["backend"], f"{r['status']}: {r['reason'][:60]}", "", "", "", "", "", ""])
            continue
        rows.append([r["case"], r["shape"], r["backend"], _t(r["seconds"]),
                     "-" if r["gflops"] is None else f"{r['gflops']:.1f}", f"{r['gbps']:.1f}",
                     "-" if r["pct_of_fma_peak"] is None else f"{r['pct_of_fma_peak']:.0f}%",
                     _x(r["speedup_vs_numpy"]), _x(r["speedup_vs_torch"]), f"{r['max_abs_err']:.1e}"])
    out.append(_md_table(["case", "shape", "backend", "time", "GFLOP/s", "GB/s", "% FMA peak", "vs NumPy",
                          "vs torch", "max err"], rows))
    out += [""] + [f"Not measured here: `{name}` ({reason})." for name, reason in absent.items()]
    out += ["", "GFLOP/s: GEMM 2·M·K·N; attention 4·B·H·Lq·Lk·D, halved for causal (FlashAttention's convention). "
            "% FMA peak: of the FMA peak above. `sgemm` is the BLAS reference (numpy: NumPy's matmul; cpu: "
            "`qkv.linear`, SciPy's BLAS; torch: `torch.matmul`). *vs X* is X's time divided by this row's time. "
            "max err: against the NumPy float64 oracle.", ""]
    tp_path = os.path.join(RESULTS, "attention_throughput.json")
    if os.path.exists(tp_path):
        with open(tp_path) as f:
            tp = json.load(f)
        impls = list(dict.fromkeys(r["impl"] for r in tp["rows"]))
        Ls = sorted({r["L"] for r in tp["rows"]})
        out += [f"## Attention throughput against sequence length ({tp['shape']}, {tp['threads']} threads)", "",
                f"Measured {tp['date_utc']} UTC by `benchmarks/plot_attention.py`.", "",
                "![attention throughput](benchmarks/results/attention_throughput.png)", ""]
        for causal in (False, True):
            get = {(r["impl"], r["L"]): r["gflops"] for r in tp["rows"] if r["causal"] == causal}
            out.append(f"GFLOP/s, {'causal' if causal else 'not causal'}:")
            out.append("")
            out.append(_md_table(["L"] + impls, [[L] + [f"{get[(i, L)]:.1f}" if (i, L) in get else "-" for i in impls]
                                                 for L in Ls]))
            out.append("")
    pm_path = os.path.join(RESULTS, "attention_peakmem.json")
    if os.path.exists(pm_path):
        with open(pm_path) as f:
            pm = json.load(f)
        impls = list(dict.fromkeys(r["impl"] for r in pm))
        Ls = sorted({r["L"] for r in pm})
        get = {(r["impl"], r["L"]): r for r in pm}
        out += ["## Peak memory of one causal attention call (B=1, H=12, D=64, float32)", "",
                "Peak RSS of the process, MiB, and in brackets its growth during the call (a fresh process per "
                "point, inputs already built; torch's import alone is ~200 MiB). qkv never "
                "materialises the L×L scores, so its growth is linear in L; the NumPy reference holds float64 "
                "(1, 12, L, L) arrays. The asv benchmark `AttentionMemory.peakmem_attention_causal` tracks the same.", ""]
        cell = lambda r: f"{r['rss_peak'] / 2**20:.0f} (+{r['call_growth'] / 2**20:.0f})"  # noqa: E731
        out.append(_md_table(["L"] + impls, [[L] + [cell(get[(i, L)]) if (i, L) in get else "-" for i in impls]
                                             for L in Ls]))
        out.append("")
    out += training_section()
    out += llama_section()
    out += hooks_section()
    out += quant_section()
    out += embed_corpus_section()
    out += ["## Reading these numbers", "",
            "- Medians after a warm-up, float32, on the threads listed above for qkv and torch alike. Other "
            "processes on the same cores move them: on a 2-core machine an OpenMP kernel whose thread is "
            "descheduled waits a whole scheduler slice at its barrier, which shows up as times in steps of a "
            "few milliseconds. Re-measure on a quiet machine before comparing releases.",
            "- The roofline is the FMA peak at the SIMD level qkv's kernels run, not an SGEMM: "
            "`OPENBLAS_CORETYPE=Haswell` (set on some machines) forces OpenBLAS's AVX2 kernel on an AVX-512 "
            "CPU and halves the SGEMM, for NumPy and for the SciPy BLAS behind `qkv.linear` alike, so a % of "
            "it would overstate qkv. The BLAS line above says which kernel ran.",
            "- A fresh output array costs first-touch page faults on every call once glibc returns large "
            "freed blocks to the OS; qkv's hot paths take `out=` (and the models reuse a preallocated KV "
            "cache). Raising `MALLOC_TRIM_THRESHOLD_`/`MALLOC_MMAP_THRESHOLD_` helps callers that allocate.",
            "- Over time, per commit: the asv suite (`asv run`, `asv publish`), see README.", ""]
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write("\n".join(out))
    print(f"wrote {os.path.join(ROOT, 'BENCHMARKS.md')}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--render", action="store_true", help="only rewrite BENCHMARKS.md from the saved results")
    p.add_argument("--bench", action="store_true", help="re-measure only `qkv bench` (keep the attention sweep "
                   "and peak memory), then render")
    args = p.parse_args()
    if not args.render:
        measure(bench_only=args.bench)
    render()


if __name__ == "__main__":
    main()
