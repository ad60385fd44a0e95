"""Side-by-side CPU attention benchmark: qkv vs torch SDPA vs NumPy, with this machine's peaks.

    PYTHONPATH=src python benchmarks/attention_cpu.py [--threads 2] [--lengths 1024 2048 4096] [--quick]

float32, B=1, H=12, D=64. For each L, non-causal and causal (Lq = Lk, where torch's top-left causal
and qkv's bottom-right coincide), then decode (Lq = 1 against Lk keys; torch with is_causal=False).
qkv and torch are timed alternately in one process (median of --repeat calls after a warm-up, each
writing into a preallocated output where the API allows it). GFLOP/s use the FlashAttention
convention, 4*B*H*Lq*Lk*D, halved for causal. The same run measures
- the FMA peak at qkv's SIMD level (csrc/fma_peak.c, through qkv._bench.fma_peak), before and after,
- the SGEMM peak (NumPy float32 matmul 2048^3, and torch.matmul),
so every figure has its roofline next to it. Peak extra memory at L = 8192 is measured in a fresh
subprocess per library: the resident set (/proc/self/statm) polled every 0.2 ms during one causal
call, minus the resident set just before it (inputs and output allocated and touched before). Writes benchmarks/results/attention_cpu.{json,md}.
NumPy naive attention materialises the (H, L, L) scores; it runs only for L <= 2048.
"""

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "dev"))

import _build  # noqa: E402

import qkv  # noqa: E402  (imported before torch: one OpenMP runtime per library, qkv's loads first)
from qkv._bench import cpu_model, fma_peak  # noqa: E402

from _memory import peak_memory  # noqa: E402  (benchmarks/_memory.py)
from _report import write  # noqa: E402  (benchmarks/_report.py)

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the table then has no torch column
    torch = None

H, D = 12, 64


def flops(Lq, Lk, causal):
    return 4.0 * H * Lq * Lk * D / (2 if causal else 1)


def median_time(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def numpy_attention(q, k, v, causal):  # (H, L, D) -> (H, L, D), the naive way: the scores materialised
    s = np.matmul(q, k.transpose(0, 2, 1)) * (1.0 / np.sqrt(D))
    if causal:
        s = np.where(np.tri(s.shape[-2], s.shape[-1], dtype=bool), s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return np.matmul(s, v)


def sgemm_peak(threads, n=2048):
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(threads, user_api="blas"):
        t = min(median_time(lambda: a @ a, 3) for _ in range(2))
    res = {"numpy_sgemm_gflops": 2 * n**3 / t / 1e9, "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "")}
    time.sleep(0.3)
    if torch is not None:
        ta = torch.from_numpy(a)
        res["torch_sgemm_gflops"] = 2 * n**3 / median_time(lambda: ta @ ta, 3) / 1e9
    return res


def compare(Lq, Lk, causal, threads, repeat, with_numpy):
    rng = np.random.default_rng(Lq + Lk)
    q = rng.standard_normal((1, H, Lq, D), dtype=np.float32)
    k = rng.standard_normal((1, H, Lk, D), dtype=np.float32)
    v = rng.standard_normal((1, H, Lk, D), dtype=np.float32)
    out = np.empty_like(q)
    fl = flops(Lq, Lk, causal)
    fns = {"qkv": lambda: qkv.attention(q, k, v, causal=causal, out=out)}
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        fns["torch"] = lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=bool(causal))
        ref = fns["torch"]().numpy()
        fns["qkv"]()
        err = float(np.abs(out - ref).max())
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeat):  # alternate, so both see the same machine state
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    row = {"Lq": Lq, "Lk": Lk, "causal": bool(causal)}
    kv_bytes = k.nbytes + v.nbytes
    for name, ts in times.items():
        t = float(np.median(ts))
        row[f"{name}_ms"] = t * 1e3
        row[f"{name}_min_ms"] = float(np.min(ts)) * 1e3
        row[f"{name}_gflops"] = fl / t / 1e9
        if Lq == 1:  # decode reads the whole K/V cache once: a bandwidth figure
            row[f"{name}_gbs"] = kv_bytes / t / 1e9
    if Lq == 1:
        row["kv_bytes"] = kv_bytes
        row["read_bw_gbs"] = _build.read_bandwidth(threads, kv_bytes)
    if torch is not None:
        row["max_abs_diff_vs_torch"] = err
        row["speedup_vs_torch"] = row["torch_ms"] / row["qkv_ms"]
        row["speedup_vs_torch_best"] = row["torch_min_ms"] / row["qkv_min_ms"]  # fastest call of each
    if with_numpy:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(threads, user_api="blas"):
            t = median_time(lambda: numpy_attention(q[0], k[0], v[0], causal), max(2, repeat // 3))
        row["numpy_ms"], row["numpy_gflops"] = t * 1e3, fl / t / 1e9
        time.sleep(0.3)  # OpenBLAS workers busy-wait ~0.1 s after a call: let them sleep before the next timing
    row["qkv_path"] = _kernel_path(q, k, v)
    return row


def _kernel_path(q, k, v):
    import importlib

    return importlib.import_module("qkv._cpu.attention").kernel_path(q.shape, k.shape, v.shape)


# the call whose peak memory _memory.peak_memory measures (lib, L, threads and rss() are defined)
MEMORY_SETUP = r"""
rng = np.random.default_rng(0)
q, k, v, out = (np.empty((1, 12, L, 64), np.float32) for _ in range(4))
for a in (q, k, v):
    rng.standard_normal(a.shape, dtype=np.float32, out=a)
out.fill(0)
if lib == "qkv":
    import qkv
    qkv.set_num_threads(threads)
    qkv.attention(q[:, :, :64], k[:, :, :64], v[:, :, :64], causal=True)  # load, spawn threads
    call = lambda: qkv.attention(q, k, v, causal=True, out=out)
else:
    import torch, torch.nn.functional as F
    torch.set_num_threads(threads)
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    F.scaled_dot_product_attention(tq[:, :, :64], tk[:, :, :64], tv[:, :, :64], is_causal=True)
    call = lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)  # includes its fresh output
"""


def markdown(result):
    m = result["machine"]
    lines = [
        "# Attention forward on the CPU: qkv vs torch SDPA vs NumPy",
        "",
        f"float32, B=1, H={H}, D={D}, {m['threads']} threads, {m['cpu']}. "
        f"FMA peak (measured in this run) {m['fma_peak_gflops']:.0f} GFLOP/s; SGEMM 2048^3: NumPy "
        f"{m['numpy_sgemm_gflops']:.0f}" + (f", torch {m['torch_sgemm_gflops']:.0f}" if "torch_sgemm_gflops" in m else "")
        + f" GFLOP/s. 1-minute load average before/after: {m['load_average_before_after'][0]:.1f}/"
        f"{m['load_average_before_after'][1]:.1f} (other jobs on the machine lower every figure; the FMA "
        f"peak before/after, {m['fma_peak_before_after'][0]:.0f}/{m['fma_peak_before_after'][1]:.0f}, shows how much)."
        + " GFLOP/s = 4*B*H*Lq*Lk*D / time (halved for causal). Medians of "
        f"{result['repeat']} alternating calls. Command: `{result['command']}`",
        "",
        "| Lq | Lk | causal | qkv ms | qkv GFLOP/s | % FMA peak | torch ms | torch GFLOP/s | qkv / torch | (fastest calls) | NumPy GFLOP/s | qkv path |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in [r for r in result["rows"] if r["Lq"] > 1]:
        lines.append(
            f"| {r['Lq']} | {r['Lk']} | {'yes' if r['causal'] else 'no'} | {r['qkv_ms']:.2f} | {r['qkv_gflops']:.0f} | "
            f"{100 * r['qkv_gflops'] / m['fma_peak_gflops']:.0f}% | "
            + (f"{r['torch_ms']:.2f} | {r['torch_gflops']:.0f} | **{r['speedup_vs_torch']:.2f}x** | "
               f"{r['speedup_vs_torch_best']:.2f}x | " if "torch_ms" in r else "- | - | - | - | ")
            + (f"{r['numpy_gflops']:.0f} | " if "numpy_gflops" in r else "- | ")
            + f"{r['qkv_path']} |"
        )
    dec = [r for r in result["rows"] if r["Lq"] == 1]
    if dec:
        lines += ["", "Decode (Lq = 1, non-causal): bandwidth-bound, so the roofline is the read bandwidth of a buffer "
                  "the size of K+V, measured in the same run.", "",
                  "| Lk | K+V MB | qkv us | qkv GB/s | torch us | torch GB/s | qkv / torch | (fastest calls) | read roofline GB/s | qkv path |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in dec:
            lines.append(
                f"| {r['Lk']} | {r['kv_bytes'] / 1e6:.1f} | {r['qkv_ms'] * 1e3:.0f} | {r['qkv_gbs']:.1f} | "
                + (f"{r['torch_ms'] * 1e3:.0f} | {r['torch_gbs']:.1f} | **{r['speedup_vs_torch']:.2f}x** | "
                   f"{r['speedup_vs_torch_best']:.2f}x | " if "torch_ms" in r else "- | - | - | - | ")
                + f"{r['read_bw_gbs']:.1f} | {r['qkv_path']} |")
    if result.get("memory"):
        lines += ["", f"Peak extra memory of one causal call at L = {result['memory']['L']} (growth of the polled RSS, "
                  "fresh process; NumPy naive would need the (H, L, L) float32 scores: "
                  f"{result['memory']['numpy_scores_mib']:.0f} MiB):", ""]
        notes = {"qkv": " (writes into a preallocated out=)",
                 "torch": f" (includes its freshly allocated output, {H * result['memory']['L'] * D * 4 / 2**20:.0f} MiB)"}
        for lib in ("qkv", "torch"):
            if result["memory"].get(lib) is not None:
                lines.append(f"- {lib}: {result['memory'][lib]:.1f} MiB{notes[lib]}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--decode", type=int, nargs="+", default=[4096, 16384], help="Lk of the Lq=1 decode rows")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--memory-length", type=int, default=8192)
    ap.add_argument("--quick", action="store_true", help="small sizes, 3 repeats, no files written")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.lengths, args.decode, args.repeat, args.memory_length = [256], [1024], 3, 1024
    qkv.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    fma0 = fma_peak(args.threads, 0.1)["gflops"]
    machine = {"threads": args.threads, "cpu": f"{cpu_model()}, {os.cpu_count()} CPUs",
               "simd": qkv._config.simd_name(), "torch": getattr(torch, "__version__", None),
               "numpy": np.__version__, **sgemm_peak(args.threads)}
    rows = []
    for L in args.lengths:
        for causal in (False, True):
            rows.append(compare(L, L, causal, args.threads, args.repeat, with_numpy=L <= 2048))
            print(rows[-1], flush=True)
    for Lk in args.decode:
        rows.append(compare(1, Lk, False, args.threads, args.repeat * 5, with_numpy=True))
        print(rows[-1], flush=True)
    fma1 = fma_peak(args.threads, 0.1)["gflops"]
    machine["fma_peak_gflops"] = max(fma0, fma1)
    machine["fma_peak_before_after"] = [fma0, fma1]
    machine["load_average_before_after"] = [load0, os.getloadavg()[0]]
    memory = {"L": args.memory_length, "numpy_scores_mib": H * args.memory_length**2 * 4 / 2**20}
    for lib in ("qkv",) + (("torch",) if torch is not None else ()):
        memory[lib] = peak_memory(MEMORY_SETUP, lib, args.memory_length, args.threads)
    result = {"machine": machine, "rows": rows, "memory": memory, "repeat": args.repeat,
              "command": "PYTHONPATH=src python benchmarks/attention_cpu.py " + " ".join(argv or sys.argv[1:]),
              "allocator": {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")}}
    md = markdown(result)
    if args.quick:
        print(md)
    else:
        write(os.path.join(args.out_dir, "attention_cpu"), md, result)
    return result


if __name__ == "__main__":
    main()
