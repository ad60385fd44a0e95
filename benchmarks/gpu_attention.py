#!/usr/bin/env python3
"""Attention forward and backward on the GPU: qkv's CUDA kernels vs a CuPy naive attention vs torch SDPA.

FlashAttention's benchmark convention: model dim 2048 (H = 2048 / D heads), B * L = 16k tokens,
TFLOP/s = 4 * B * H * L * L * D / time (halved for causal), the backward counted as 2.5x the
forward. float16, bfloat16, float32; D = 64, 128; L = 1k..16k; causal and not. Timed with CUDA
events on the current stream after a warm-up; each result is validated against the naive
attention (or a slice of it) first. Backward rows (after the forward ones, same budget): qkv's
attention_backward on the kernels it picks (tensor cores for float16/bfloat16 at D = 64/128) and
on the CUDA-core pair (set_path("rows")), vs torch SDPA's ``out.backward(dout)`` alone.

    python benchmarks/gpu_attention.py [--quick] [--budget SECONDS] [--no-backward] [--out results.json]
"""

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


def timeit(fn, cp, min_time=0.3, max_reps=50):
    fn()
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    one = cp.cuda.get_elapsed_time(start, end) / 1e3
    reps = int(max(1, min(max_reps, min_time / max(one, 1e-6))))
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / 1e3 / reps


def naive(cp, q, k, v, causal):
    """softmax(q k^T / sqrt(D)) v in float32 with CuPy ops (materialises the scores)."""
    D = q.shape[-1]
    s = cp.matmul(q.astype(cp.float32), cp.swapaxes(k.astype(cp.float32), -1, -2)) * np.float32(1 / math.sqrt(D))
    if causal:
        L = q.shape[2]
        s = cp.where(cp.tri(L, dtype=bool), s, np.float32(-np.inf))
    s = s - s.max(axis=-1, keepdims=True)
    p = cp.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return cp.matmul(p, v.astype(cp.float32)).astype(q.dtype)


def naive_backward(cp, q, k, v, o, dout, causal):
    """(dq, dk, dv) of softmax(q k^T / sqrt(D)) v in float32 with CuPy ops (materialises P)."""
    f = [a.astype(cp.float32) for a in (q, k, v, o, dout)]
    q, k, v, o, dout = f
    D = q.shape[-1]
    scale = np.float32(1 / math.sqrt(D))
    s = cp.matmul(q, cp.swapaxes(k, -1, -2)) * scale
    if causal:
        L = q.shape[2]
        s = cp.where(cp.tri(L, dtype=bool), s, np.float32(-np.inf))
    p = cp.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    dv = cp.matmul(cp.swapaxes(p, -1, -2), dout)
    dp = cp.matmul(dout, cp.swapaxes(v, -1, -2))
    ds = p * (dp - (dout * o).sum(axis=-1, keepdims=True))
    return cp.matmul(ds, k) * scale, cp.matmul(cp.swapaxes(ds, -1, -2), q) * scale, dv


def backward_rows(cp, qkv, torch, has_torch, dtypes, Ls, deadline):
    """Backward rows: qkv auto (tensor cores where they apply), qkv CUDA cores, torch SDPA backward."""
    import qkv._cuda as qc

    rows = []
    rng = cp.random.default_rng(1)
    for dname in ("bfloat16", "float16", "float32"):
        for D in (128, 64):
            for L in Ls:
                for causal in (False, True):
                    if time.time() > deadline:
                        print("budget reached; stopping")
                        return rows
                    H, B = 2048 // D, max(1, 16384 // L)
                    dt = dtypes[dname]
                    q, k, v, dout = (rng.standard_normal((B, H, L, D), dtype=cp.float32).astype(dt) for _ in range(4))
                    flops = 2.5 * 4 * B * H * L * L * D / (2 if causal else 1)
                    row = {"pass": "backward", "dtype": dname, "D": D, "L": L, "B": B, "H": H, "causal": causal,
                           "qkv_kernels": qc._attention_backward_kernels(q, k, v, dout)}
                    o, lse = qkv.attention(q, k, v, causal=causal, return_lse=True)
                    sl = slice(0, 1)  # one (batch, head) against the naive backward
                    got = qkv.attention_backward(dout[sl, sl], q[sl, sl], k[sl, sl], v[sl, sl], o[sl, sl],
                                                 lse[sl, sl], causal=causal)
                    want = naive_backward(cp, q[sl, sl], k[sl, sl], v[sl, sl], o[sl, sl], dout[sl, sl], causal)
                    errs = [cp.abs(g.astype(cp.float32) - w).max() / (1 + cp.abs(w).max()) for g, w in zip(got, want)]
                    row["max_rel_err_vs_naive"] = max(float(e) for e in errs)
                    got = want = None
                    t = timeit(lambda: qkv.attention_backward(dout, q, k, v, o, lse, causal=causal), cp)
                    row["qkv_ms"], row["qkv_tflops"] = t * 1e3, flops / t / 1e12
                    qc.set_path("rows")
                    try:
                        t = timeit(lambda: qkv.attention_backward(dout, q, k, v, o, lse, causal=causal), cp, max_reps=5)
                        row["qkv_cuda_cores_ms"], row["qkv_cuda_cores_tflops"] = t * 1e3, flops / t / 1e12
                    finally:
                        qc.set_path("auto")
                    if has_torch:
                        tt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dname]
                        tq, tk, tv = (torch.as_tensor(x.astype(cp.float32), device="cuda").to(tt).requires_grad_()
                                      for x in (q, k, v))
                        tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
                        tdout = torch.as_tensor(dout.astype(cp.float32), device="cuda").to(tt)
                        fn = lambda: tout.backward(tdout, retain_graph=True)  # noqa: E731
                        t = timeit(fn, cp)
                        row["torch_sdpa_ms"], row["torch_sdpa_tflops"] = t * 1e3, flops / t / 1e12
                        tq = tk = tv = tout = tdout = None
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    q = k = v = dout = o = lse = None
                    cp.get_default_memory_pool().free_all_blocks()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="L = 1k, 4k only")
    ap.add_argument("--budget", type=float, default=240.0, help="stop starting new configurations after this many seconds")
    ap.add_argument("--no-backward", action="store_true", help="forward rows only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import cupy as cp
    import ml_dtypes

    import qkv

    try:
        import torch

        has_torch = torch.cuda.is_available()
    except Exception:
        torch, has_torch = None, False
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    info = {"device": props["name"].decode(), "compute_capability": dev.compute_capability,
            "cupy": cp.__version__, "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "torch": getattr(torch, "__version__", None), "torch_cuda": has_torch, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(info))
    dtypes = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
    Ls = [1024, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384]
    rows, t_start = [], time.time()
    rng = cp.random.default_rng(0)
    for dname in ("bfloat16", "float16", "float32"):
        for D in (128, 64):
            for L in Ls:
                for causal in (False, True):
                    if time.time() - t_start > args.budget:
                        print("budget reached; stopping")
                        break
                    H, B = 2048 // D, max(1, 16384 // L)
                    dt = dtypes[dname]
                    q, k, v = (rng.standard_normal((B, H, L, D), dtype=cp.float32).astype(dt) for _ in range(3))
                    flops = 4 * B * H * L * L * D / (2 if causal else 1)
                    row = {"dtype": dname, "D": D, "L": L, "B": B, "H": H, "causal": causal}
                    # correctness on the first batch element against the naive path
                    o = qkv.attention(q, k, v, causal=causal)
                    sl = slice(0, 1)
                    e = naive(cp, q[sl], k[sl], v[sl], causal).astype(cp.float32)
                    err = float(cp.abs(o[sl].astype(cp.float32) - e).max())
                    row["max_abs_err_vs_naive"] = err
                    t = timeit(lambda: qkv.attention(q, k, v, causal=causal), cp)
                    row["qkv_ms"], row["qkv_tflops"] = t * 1e3, flops / t / 1e12
                    naive_bytes = B * H * L * L * 4 * 3
                    if naive_bytes < 40e9:
                        t = timeit(lambda: naive(cp, q, k, v, causal), cp, max_reps=5)
                        row["naive_ms"], row["naive_tflops"] = t * 1e3, flops / t / 1e12
                    if has_torch:
                        tt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dname]
                        tq, tk, tv = (torch.as_tensor(x.astype(cp.float32), device="cuda").to(tt) for x in (q, k, v))
                        fn = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)  # noqa: E731
                        t = timeit(fn, cp)
                        row["torch_sdpa_ms"], row["torch_sdpa_tflops"] = t * 1e3, flops / t / 1e12
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    q = k = v = o = e = None  # release before the next size
                    cp.get_default_memory_pool().free_all_blocks()
    if not args.no_backward:  # the backward gets its own budget after the forward's
        rows += backward_rows(cp, qkv, torch, has_torch, dtypes, Ls, time.time() + args.budget)
    result = {"info": info, "results": rows}
    target = [r for r in rows if r["dtype"] == "bfloat16" and r["D"] == 128 and r["L"] == 4096 and "pass" not in r]
    for r in target:
        print(f"target bf16 D=128 L=4096 causal={r['causal']}: {r['qkv_tflops']:.1f} TFLOP/s "
              f"(goal {350 if r['causal'] else 400}; torch SDPA {r.get('torch_sdpa_tflops', float('nan')):.1f})")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"gpu_attention_{info['device'].replace(' ', '_')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()
