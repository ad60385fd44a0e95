"""Numbered versions of the CPU attention backward, each validated against the oracle, then timed.

    PYTHONPATH=src python benchmarks/dev/attention_backward_versions.py [--threads 2] [--lengths 1024 2048]

float32, B=1, H=12, D=64, non-causal and causal (Lq = Lk). Every C version is csrc/attention.c
itself, compiled here through ctypes with -D overrides of its block sizes (BWD_QB queries per step,
RKB2/NCB2 of the AVX2 dK/dV microkernel, BK keys per tile) and called with a forced path and SIMD
level, so the numbered versions stay runnable as the kernel moves on. Each is checked against
qkv._reference.attention_backward (max error < 1e-5 of the largest gradient) before it is timed;
times are medians of alternating calls, GFLOP/s with FlashAttention's convention (backward = 2.5x
the forward's 4*B*H*L^2*D, halved for causal), next to the FMA peak measured in the same run.

Versions
  b0  NumPy naive: P materialised (H, L, L), five matmuls (OpenBLAS)
  b1  plain C: one (query, key) pair at a time, loops over D vectorised by GCC
  b2  tiled AVX2, 16 queries per step (one sub-block): dK/dV microkernel reloads its
      accumulators every 16 queries
  b3  tiled AVX2, 64 queries per step (4 sub-blocks share each K/V tile and each dK/dV update)   <- ships
  b4  b3 with 128 queries per step
  b5  b3 with a 4 keys x 3 vectors dK/dV microkernel (NCB2=3)
  b6  b3 with 32-key tiles (BK=32)
  The AVX-512 build (64 queries per sub-block, 4 keys x 4 vectors for dK/dV) compiles but could not
  be timed or run here: the machine these were measured on is an AVX2-only AMD EPYC. Its tests run
  only where the CPU has AVX-512.

What the measurements taught (2-core AMD EPYC, AVX2, shared with other jobs: the 1-thread FMA peak
moved between ~60 and ~90 GFLOP/s from one run to the next, so compare versions within one run, and
use --cpu-time):
- One thread, CPU time, L = 1024: b1 plain ~7 GFLOP/s; the tiled versions 50-75 GFLOP/s non-causal
  and 46-67 causal depending on the machine's load, 55-90% of the FMA peak measured in the same run.
  perf: the five products take ~90% of the time (dK/dV microkernel ~40%, the two K.Q^T-style
  products ~34%, P^T.V-style dQ ~16%), recomputing P and dS, packing and masking the rest.
- b3 over b2 (4 sub-blocks share each dK/dV update and each K/V tile): +5% in one run, noise in
  another. b4 (128 queries per step), b5 (4x3 dK/dV microkernel), b7-b9 (6-key K.Q^T and dK/dV
  microkernels, 6-column P^T.V, 128 queries) all within +-5% of b3 in the same run, with no sign
  that holds from one run to the next (b8 was 4-8% faster in one run, equal in another): negative
  results, so b3 ships (least scratch, the forward's microkernel shapes). b6 (32-key tiles) was
  slower non-causal (~10%). perf annotate of the dK/dV microkernel: 2 loads, 4 broadcasts and 8
  FMAs per lane, accumulators in registers; the FMAs wait on the broadcasts.
- Against torch (its backward is GEMM-based; 1 thread, CPU time, L = 1024): torch ~48 GFLOP/s
  non-causal, ~31 causal, qkv ~61 and ~60: 1.3x and 1.9x. 2x non-causal would need about 100% of
  this machine's AVX2 FMA peak: the 2.0x target is out of reach here without AVX-512 (the forward
  got its margin from the AVX-512 microkernels on another machine).
- b0, NumPy with P materialised: 12-28 GFLOP/s and O(L^2) memory.
"""

import argparse
import ctypes
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _build  # noqa: E402

import qkv  # noqa: E402
from qkv import _reference as ref  # noqa: E402
from qkv._bench import fma_peak  # noqa: E402

H, D = 12, 64
PATH = {"plain": 1, "tiled": 2}
SIMD = {"scalar": 0, "avx2": 1, "avx512": 2}

# name: (description, -D overrides, path, simd)
VERSIONS = {
    "b1": ("plain C pairs", {}, "plain", "avx2"),
    "b2": ("tiled AVX2, 16 queries per step", {"BWD_QB": 16}, "tiled", "avx2"),
    "b3": ("tiled AVX2, 64 queries per step (ships)", {}, "tiled", "avx2"),
    "b4": ("b3 with 128 queries per step", {"BWD_QB": 128}, "tiled", "avx2"),
    "b5": ("b3 with a 4x3 dK/dV microkernel", {"NCB2": 3}, "tiled", "avx2"),
    "b6": ("b3 with 32-key tiles", {"BK": 32}, "tiled", "avx2"),
    "b7": ("b3 with 6-key K.Q^T and dK/dV microkernels", {"RK2": 6, "RKB2": 6}, "tiled", "avx2"),
    "b8": ("b7 with 6-column P^T.V microkernel", {"RK2": 6, "RKB2": 6, "RD2": 6}, "tiled", "avx2"),
    "b9": ("b8 with 128 queries per step", {"RK2": 6, "RKB2": 6, "RD2": 6, "BWD_QB": 128}, "tiled", "avx2"),
}


def build(defines):
    """csrc/attention.c compiled with these -D overrides, as a ctypes function."""
    lib = _build.load_attention("_attention_bwd", defines)
    fn = lib.qkv_attention_backward_f32
    P, I64 = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    fn.argtypes = [P] * 9 + [P, ctypes.c_int, P, P, I64, I64, ctypes.c_int, ctypes.c_float, ctypes.c_int,
                             ctypes.c_int, ctypes.c_int]
    return fn


def caller(fn, dout, q, k, v, out, lse, causal, path, simd, threads):
    B, Hq, Lq, Dq = q.shape
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    shape = (ctypes.c_int64 * 7)(B, Hq, k.shape[1], Lq, k.shape[2], Dq, v.shape[3])
    stride = (ctypes.c_int64 * 9)(*[s // 4 for a in (q, k, v) for s in a.strides[:3]])
    args = (dq.ctypes.data, dk.ctypes.data, dv.ctypes.data, dout.ctypes.data, q.ctypes.data, k.ctypes.data,
            v.ctypes.data, out.ctypes.data, lse.ctypes.data, None, 0, None, None, shape, stride,
            1 if causal else 0, 1 / np.sqrt(Dq), PATH[path], SIMD[simd], threads)

    def run():
        if fn(*args):
            raise RuntimeError("kernel failed")
        return dq, dk, dv

    return run


def numpy_naive(dout, q, k, v, out, lse, causal):
    """The five matmuls with P materialised (float32, OpenBLAS)."""
    scale = np.float32(1 / np.sqrt(q.shape[-1]))
    s = np.matmul(q[0], k[0].transpose(0, 2, 1)) * scale
    if causal:
        s = np.where(np.tri(s.shape[-2], s.shape[-1], s.shape[-1] - s.shape[-2], dtype=bool), s, -np.inf)
    p = np.exp(s - lse[0][..., None])
    dv = np.matmul(p.transpose(0, 2, 1), dout[0])
    dp = np.matmul(dout[0], v[0].transpose(0, 2, 1))
    ds = p * (dp - (dout[0] * out[0]).sum(-1, keepdims=True)) * scale
    return np.matmul(ds, k[0])[None], np.matmul(ds.transpose(0, 2, 1), q[0])[None], dv[None]


def validate(name, run, want):
    for g, w, what in zip(run(), want, ("dq", "dk", "dv")):
        err = float(np.abs(g - w).max() / np.abs(w).max())
        if not err < 1e-5:
            raise AssertionError(f"{name} {what}: max error {err:.2e} of the largest gradient vs the oracle")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _build.add_timing_args(ap)
    ap.add_argument("--versions", nargs="+", default=list(VERSIONS))
    args = ap.parse_args(argv)
    clock = _build.timing_clock(args)
    versions = {n: VERSIONS[n] for n in args.versions}
    fns = {name: build(defs) for name, (_, defs, _, _) in versions.items()}
    peak = fma_peak(args.threads, 0.1)["gflops"]
    print(f"FMA peak, {args.threads} threads: {peak:.0f} GFLOP/s")
    rng = np.random.default_rng(0)
    for L in args.lengths:
        dout, q, k, v = (rng.standard_normal((1, H, L, D), dtype=np.float32) for _ in range(4))
        for causal in (False, True):
            out, lse = qkv.attention(q, k, v, causal=causal, return_lse=True)
            want = ref.attention_backward(dout, q, k, v, out, lse, 1 / np.sqrt(D),
                                          causal="bottom_right" if causal else None)
            runs = {name: caller(fns[name], dout, q, k, v, out, lse, causal, path, simd, args.threads)
                    for name, (_, _, path, simd) in versions.items()}
            for name, run in runs.items():
                validate(name, run, want)
            times = _build.time_all(runs, args.repeat, clock)
            with threadpool_limits(args.threads, user_api="blas"):
                naive = lambda: numpy_naive(dout, q, k, v, out, lse, causal)  # noqa: E731
                validate("b0", naive, want)
                times = {"b0": _build.time_all({"b0": naive}, 2, clock)["b0"], **times}
            time.sleep(0.3)
            fl = 2.5 * 4 * H * L * L * D / (2 if causal else 1)
            print(f"\nL={L} {'causal' if causal else 'non-causal'}")
            for name, t in times.items():
                desc = "NumPy naive" if name == "b0" else VERSIONS[name][0]
                print(f"  {name} {desc:42s} {t * 1e3:8.2f} ms {fl / t / 1e9:6.0f} GFLOP/s {100 * fl / t / 1e9 / peak:4.0f}%")


if __name__ == "__main__":
    main()
