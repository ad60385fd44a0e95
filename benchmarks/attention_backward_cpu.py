"""Attention backward on the CPU, side by side in one process: qkv.attention_backward vs torch's
scaled_dot_product_attention backward (``out.backward(dout)`` alone, the forward done beforehand).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/attention_backward_cpu.py \\
        [--rounds 7] [--lengths 1024 2048] [--memory-length 8192] [--out benchmarks/results/attention_backward_cpu]

float32, B=1, H=12, D=64, causal and not. GFLOP/s with FlashAttention's convention: backward =
2.5x the forward's 4*B*H*Lq*Lk*D, halved for causal; % of this machine's FMA peak at qkv's SIMD
level, measured in the same run before and after the timings (other jobs on a shared machine lower
every figure; the two peaks show by how much). Target: qkv >= 2.0x torch. Then the first length
again on one thread each, timed by CPU time (the kernels' own ratio on a shared machine). Peak extra memory of one
causal call at --memory-length, each library in a fresh child process: growth of the resident set
polled every 0.2 ms during the call (tracemalloc cannot see C allocations), with and without the
three gradients the call returns. Target: the kernel's own extra memory under 128 MB. Writes
<out>.json and <out>.md.
"""

import argparse
import importlib
import os
import sys
import time

import numpy as np

import qkv
from qkv._bench import fma_peak

from _memory import peak_memory  # benchmarks/_memory.py
from _report import interleaved_medians, machine_line, machine_meta, write  # benchmarks/_report.py

try:
    import torch
except ImportError:  # torch is optional: only a baseline
    torch = None

HERE = os.path.dirname(os.path.abspath(__file__))
B, H, D = 1, 12, 64


def gflops(L, causal, seconds):
    return 2.5 * 4 * B * H * L * L * D / (2 if causal else 1) / seconds / 1e9


def _timed(fn):
    """A row entry that reports its own seconds (torch times out.backward alone)."""
    fn.timed = True
    return fn


CLOCK = time.perf_counter  # one-thread rounds use time.thread_time: the kernel's CPU time, not the scheduler's


def seconds(fn):
    if getattr(fn, "timed", False):
        return fn()
    t0 = CLOCK()
    fn()
    return CLOCK() - t0


def workloads(rng, lengths):
    rows = {}
    for L in lengths:
        dout, q, k, v = (rng.standard_normal((B, H, L, D), dtype=np.float32) for _ in range(4))
        for causal in (False, True):
            name = f"L={L} {'causal' if causal else 'non-causal'}"
            out, lse = qkv.attention(q, k, v, causal=causal, return_lse=True)
            impls = {"qkv": lambda dout=dout, q=q, k=k, v=v, out=out, lse=lse, causal=causal:
                     qkv.attention_backward(dout, q, k, v, out, lse, causal=causal)}
            if torch is not None:
                tq, tk, tv = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (q, k, v))
                tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
                tdo = torch.from_numpy(dout)

                @_timed
                def torch_bwd(tq=tq, tk=tk, tv=tv, tout=tout, tdo=tdo):
                    tq.grad = tk.grad = tv.grad = None
                    t0 = CLOCK()
                    tout.backward(tdo, retain_graph=True)
                    return CLOCK() - t0

                impls["torch"] = torch_bwd
            rows[name] = impls
    return rows


# the call whose peak memory _memory.peak_memory measures (lib, L, threads and rss() are defined)
MEMORY_SETUP = r"""
rng = np.random.default_rng(0)
dout, q, k, v = (rng.standard_normal((1, 12, L, 64), dtype=np.float32) for _ in range(4))
if lib == "qkv":
    import qkv
    qkv.set_num_threads(threads)
    out, lse = qkv.attention(q, k, v, causal=True, return_lse=True)
    small = [a[:, :, :64].copy() for a in (dout, q, k, v, out)] + [lse[:, :, :64].copy()]
    qkv.attention_backward(*small, causal=True)  # load, spawn threads
    call = lambda: qkv.attention_backward(dout, q, k, v, out, lse, causal=True)
else:
    import torch, torch.nn.functional as F
    torch.set_num_threads(threads)
    tq, tk, tv = (torch.from_numpy(a).requires_grad_(True) for a in (q, k, v))
    s = [t[:, :, :64].detach().clone().requires_grad_(True) for t in (tq, tk, tv)]
    F.scaled_dot_product_attention(*s, is_causal=True).backward(torch.from_numpy(dout[:, :, :64].copy()))
    tout = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    tdo = torch.from_numpy(dout)
    call = lambda: tout.backward(tdo)  # its gradients are fresh tensors too
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--memory-length", type=int, default=8192)
    ap.add_argument("--out", default="benchmarks/results/attention_backward_cpu")
    args = ap.parse_args()
    threads = qkv.get_num_threads()
    if torch is not None:
        torch.set_num_threads(threads)
    cpu_attention = importlib.import_module("qkv._cpu.attention")
    path = cpu_attention.backward_kernel_path((B, H, 1024, D), (B, H, 1024, D), (B, H, 1024, D))
    load = [os.getloadavg()[0]]
    peaks = [fma_peak(threads, 0.2)]
    rows = workloads(np.random.default_rng(0), args.lengths)
    med = interleaved_medians(rows, args.rounds, seconds=seconds)
    peaks.append(fma_peak(threads, 0.2))
    load.append(os.getloadavg()[0])
    # the same on one thread each, timed by CPU time: on a shared machine the ratio of the kernels
    global CLOCK
    qkv.set_num_threads(1)
    if torch is not None:
        torch.set_num_threads(1)
    CLOCK = time.thread_time
    med1 = interleaved_medians(workloads(np.random.default_rng(0), args.lengths[:1]), args.rounds, seconds=seconds)
    CLOCK = time.perf_counter
    qkv.set_num_threads(None)
    if torch is not None:
        torch.set_num_threads(threads)
    peak = max(p["gflops"] for p in peaks)
    mem_L = args.memory_length
    outputs_mb = 3 * B * H * mem_L * D * 4 / 2**20
    memory = {"L": mem_L, "outputs_mb": outputs_mb, "qkv": peak_memory(MEMORY_SETUP, "qkv", mem_L, threads)}
    if torch is not None:
        memory["torch"] = peak_memory(MEMORY_SETUP, "torch", mem_L, threads)
    meta = machine_meta(args.rounds, fma_peak=peaks, load_average_before_after=load, qkv_path=path)
    lines = [f"# Attention backward, CPU ({meta['date']})", "", machine_line(meta), "",
             f"float32, B={B}, H={H}, D={D}, Lq = Lk = L; qkv path: {path}. GFLOP/s = 2.5 x 4*B*H*L^2*D / time "
             f"(halved for causal); FMA peak at qkv's SIMD level, {threads} threads, before/after the timings: "
             f"{peaks[0]['gflops']:.0f}/{peaks[1]['gflops']:.0f} GFLOP/s (1 thread: "
             f"{peaks[0]['gflops_1thread']:.0f}/{peaks[1]['gflops_1thread']:.0f}); % of the higher. 1-minute load "
             f"average before/after: {load[0]:.1f}/{load[1]:.1f}. torch: `out.backward(dout)` alone.", "",
             "| workload | qkv ms | qkv GFLOP/s | % FMA peak | torch ms | torch GFLOP/s | torch / qkv (target >= 2.0) |",
             "|---|---|---|---|---|---|---|"]
    targets = {}
    for name, impls in med.items():
        L, causal = int(name.split()[0][2:]), name.endswith(" causal")
        q_s = impls["qkv"]
        g = gflops(L, causal, q_s)
        t_s = impls.get("torch")
        ratio = None if t_s is None else t_s / q_s
        targets[name] = {"speedup_vs_torch": ratio, "target": 2.0, "met": None if ratio is None else ratio >= 2.0}
        lines.append(f"| {name} | {q_s * 1e3:.1f} | {g:.1f} | {100 * g / peak:.0f}% | "
                     + ("- | - | - |" if t_s is None else
                        f"{t_s * 1e3:.1f} | {gflops(L, causal, t_s):.1f} | {ratio:.2f}x {'(met)' if ratio >= 2 else '(missed)'} |"))
    peak1 = max(p["gflops_1thread"] for p in peaks)
    lines += ["", "One thread each, CPU time (time.thread_time: what the kernels cost, whoever else runs):", "",
              "| workload | qkv ms | qkv GFLOP/s | % 1-thread FMA peak | torch ms | torch GFLOP/s | torch / qkv |",
              "|---|---|---|---|---|---|---|"]
    for name, impls in med1.items():
        L, causal = int(name.split()[0][2:]), name.endswith(" causal")
        q_s, t_s = impls["qkv"], impls.get("torch")
        g = gflops(L, causal, q_s)
        lines.append(f"| {name} | {q_s * 1e3:.1f} | {g:.1f} | {100 * g / peak1:.0f}% | "
                     + ("- | - | - |" if t_s is None else
                        f"{t_s * 1e3:.1f} | {gflops(L, causal, t_s):.1f} | {t_s / q_s:.2f}x |"))
    fmt = (lambda x: "failed" if x is None else f"{x:.0f} MB")
    qm = memory["qkv"]
    lines += ["", f"Peak extra memory of one causal call at L = {mem_L} (resident-set growth in a child process, "
              f"{threads} threads; the call returns dq, dk, dv: {outputs_mb:.0f} MB): qkv {fmt(qm)} "
              f"(without its outputs: {fmt(None if qm is None else qm - outputs_mb)}; target < 128 MB)"
              + (f", torch {fmt(memory.get('torch'))}" if torch is not None else "") + "."]
    write(args.out, "\n".join(lines) + "\n",
          {"meta": meta, "median_seconds": med, "median_cpu_seconds_1thread": med1, "targets": targets,
           "memory_mb": memory})


if __name__ == "__main__":
    main()
