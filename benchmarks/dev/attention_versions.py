"""Numbered versions of the CPU attention kernel, each validated against the oracle, then timed.

    PYTHONPATH=src python benchmarks/dev/attention_versions.py [--threads 2] [--lengths 1024 2048] [--quick]

float32, B=1, H=12, D=64, non-causal and causal (Lq = Lk); then decode (Lq=1, Lk=4096). Every C
version is csrc/attention.c itself, compiled here through ctypes with -D overrides of its block sizes
(BK keys per tile, NS sub-blocks of 64 queries per work item, RK512/RD512 microkernel rows) and
called with a forced path and SIMD level, so the numbered versions stay runnable as the kernel moves
on. Each is checked against qkv._reference.attention (max abs error < 2e-5) before it is timed;
times are medians of alternating calls, GFLOP/s with the FlashAttention convention (4*B*H*L^2*D,
halved for causal), next to the FMA peak measured in the same run (csrc/fma_peak.c, at qkv's SIMD level).

Versions
  v0  NumPy naive: scores materialised (H, L, L), softmax, matmul (OpenBLAS)
  v1  plain C: one query row at a time, loops vectorised by GCC, exp by polynomial (qkv_expf)
  v2  tiled AVX2: transposed scores (8 queries per ymm), 4 keys x 2 vectors microkernels
  v3  tiled AVX-512, 64-query work items (NS=1): every work item streams all of K/V
  v4  tiled AVX-512, 256-query work items (NS=4), 64-key tiles, 6x4 K.Q^T and 4x4 P^T.V   <- ships
  v5  v4 with 128-key tiles
  v6  v4 with 32-key tiles
  v7  v4 with a 4x4 K.Q^T microkernel (RK512=4)
  v8  v4 with 512-query work items (NS=8)
  decode: d1 plain rows over the keys per head (path plain), d2 split-K with the SIMD row kernel
  and a log-sum-exp merge (ships for Lq <= 16 and Lk >= 1024).

What the measurements taught (2-vCPU Xeon VM shared with other jobs; use --cpu-time there):
- One thread, CPU time: v1 plain ~11 GFLOP/s, v2 AVX2 45-54, v3-v8 AVX-512 93-116 GFLOP/s (60-75%
  of the 1-thread FMA peak, ~155 GFLOP/s); the block-size variants v4-v8 are within noise of each
  other, so v4 ships (smallest scratch). Profile of v4: the two microkernels ~80% of the time,
  online softmax ~12%, packing Q^T and the rest ~8%.
- On Intel the softmax's vector ops run on the same two ports as the FMAs, so every op per score
  vector counts (128 FMAs per score vector at D = 64): exp2 has one rounding and a degree-6
  polynomial; the max pass runs 4 independent chains (one vmaxps chain was latency-bound, ~6%).
- Negative results: an exp2 that let -inf scores underflow through denormals (clamp at -160, then
  vscalefps) cost a microcode assist per masked entry: padding-masked calls 50 ms instead of 33 ms
  at L = 1024, causal diagonal tiles too; clamping at -126 and zeroing with a masked vscalefps fixed
  it. Checking each V tile for NaN/Inf inside every work item cost ~3% (now once per call). A
  remainder loop of 1-key microkernels when a tile is not a multiple of RK (a switch with constant
  rk keeps the accumulators in registers). Strided scalar writes for per-query bool masks (now SIMD
  zero-byte bitmasks: 74 -> 47 ms at L = 1024 with a random mask, 39 ms without a mask). The plain
  row kernel for decode (one horizontal reduction and one scalar exp per key): d2 is ~1.3x faster.
- Decode (Lq = 1, Lk = 4096) reads 25 MB of K/V and runs at the read bandwidth of the machine
  (~23 GB/s per core), so splitting keys across threads is what pays, not compute.
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

from qkv import _reference as ref  # noqa: E402
from qkv._bench import fma_peak  # noqa: E402
from qkv._cpu._runtime import SIMD_NAMES, cpu_simd_level  # noqa: E402

H, D = 12, 64
PATH = {"plain": 1, "tiled": 2, "split-k": 3}
SIMD = {"scalar": 0, "avx2": 1, "avx512": 2}

# name: (description, -D overrides, path, simd)
VERSIONS = {
    "v1": ("plain C rows", {}, "plain", "avx512"),
    "v2": ("tiled AVX2", {}, "tiled", "avx2"),
    "v3": ("tiled AVX-512, NS=1", {"NS": 1}, "tiled", "avx512"),
    "v4": ("tiled AVX-512, NS=4, BK=64 (ships)", {}, "tiled", "avx512"),
    "v5": ("v4 with BK=128", {"BK": 128}, "tiled", "avx512"),
    "v6": ("v4 with BK=32", {"BK": 32}, "tiled", "avx512"),
    "v7": ("v4 with RK512=4", {"RK512": 4}, "tiled", "avx512"),
    "v8": ("v4 with NS=8", {"NS": 8}, "tiled", "avx512"),
}
DECODE = {"d1": ("plain rows", {}, "plain", "avx512"), "d2": ("split-K (ships)", {}, "split-k", "avx512")}


def build(defines):
    """csrc/attention.c compiled with these -D overrides, as a ctypes function."""
    lib = _build.load_attention("_attention", defines)
    fn = lib.qkv_attention_f32
    P, I64 = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    fn.argtypes = [P, P, P, P, P, P, P, ctypes.c_int, P, P, I64, I64, ctypes.c_int, ctypes.c_float, ctypes.c_int,
                   ctypes.c_int, ctypes.c_int]
    return fn


def caller(fn, q, k, v, causal, path, simd, threads):
    out = np.empty(q.shape[:3] + (v.shape[3],), np.float32)
    B, Hq, Lq, Dq = q.shape
    shape = (ctypes.c_int64 * 7)(B, Hq, k.shape[1], Lq, k.shape[2], Dq, v.shape[3])
    st = [s // 4 for a in (q, k, v) for s in a.strides[:3]]
    stride = (ctypes.c_int64 * 9)(*st)
    args = (out.ctypes.data, None, None, q.ctypes.data, k.ctypes.data, v.ctypes.data, None, 0, None, None, shape,
            stride, 1 if causal else 0, 1 / np.sqrt(Dq), PATH[path], SIMD[simd], threads)

    def run():
        if fn(*args):
            raise RuntimeError("kernel failed")
        return out

    return run


def numpy_naive(q, k, v, causal):
    s = np.matmul(q[0], k[0].transpose(0, 2, 1)) / np.float32(np.sqrt(q.shape[-1]))
    if causal:
        s = np.where(np.tri(s.shape[-2], s.shape[-1], s.shape[-1] - s.shape[-2], dtype=bool), s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return np.matmul(s, v[0])[None]


def validate(name, run, q, k, v, causal):
    want = ref.attention(q, k, v, 1 / np.sqrt(q.shape[-1]), causal="bottom_right" if causal else None)
    err = float(np.abs(run() - want).max())
    if not err < 2e-5:
        raise AssertionError(f"{name}: max abs error {err:.2e} vs the oracle")
    return err


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _build.add_timing_args(ap)
    args = ap.parse_args(argv)
    clock = _build.timing_clock(args)
    for table in (VERSIONS, DECODE):  # an ISA this CPU lacks would be an illegal instruction: skip, say so
        for name, (desc, _, _, simd) in list(table.items()):
            if SIMD[simd] > cpu_simd_level():
                print(f"skipped {name} ({desc}): needs {simd}, this CPU has {SIMD_NAMES[cpu_simd_level()]}")
                del table[name]
    fns = {name: build(defs) for name, (_, defs, _, _) in {**VERSIONS, **DECODE}.items()}
    peak = fma_peak(args.threads, 0.1)["gflops"]
    print(f"FMA peak, {args.threads} threads: {peak:.0f} GFLOP/s")
    rng = np.random.default_rng(0)
    for L in args.lengths:
        q, k, v = (rng.standard_normal((1, H, L, D), dtype=np.float32) for _ in range(3))
        for causal in (False, True):
            runs = {name: caller(fns[name], q, k, v, causal, path, simd, args.threads)
                    for name, (_, _, path, simd) in VERSIONS.items()}
            for name, run in runs.items():
                validate(name, run, q, k, v, causal)
            times = _build.time_all(runs, args.repeat, clock)
            # NumPy last and alone: OpenBLAS worker threads busy-wait ~0.1 s after each call, which
            # on 2 vCPUs would steal the core from whatever runs next
            with threadpool_limits(args.threads, user_api="blas"):
                validate("v0", lambda: numpy_naive(q, k, v, causal), q, k, v, causal)
                times = {"v0": _build.time_all({"v0": lambda: numpy_naive(q, k, v, causal)}, 2, clock)["v0"], **times}
            time.sleep(0.3)
            fl = 4 * H * L * L * D / (2 if causal else 1)
            print(f"\nL={L} {'causal' if causal else 'non-causal'}")
            for name, t in times.items():
                desc = "NumPy naive" if name == "v0" else VERSIONS[name][0]
                print(f"  {name} {desc:38s} {t * 1e3:8.2f} ms {fl / t / 1e9:6.0f} GFLOP/s {100 * fl / t / 1e9 / peak:4.0f}%")
    Lk = 1024 if args.quick else 4096
    q = rng.standard_normal((1, H, 1, D), dtype=np.float32)
    k, v = (rng.standard_normal((1, H, Lk, D), dtype=np.float32) for _ in range(2))
    runs = {name: caller(fns[name], q, k, v, False, path, simd, args.threads) for name, (_, _, path, simd) in DECODE.items()}
    for name, run in runs.items():
        validate(name, run, q, k, v, False)
    times = _build.time_all(runs, args.repeat * 20, clock)
    print(f"\ndecode Lq=1 Lk={Lk}")
    for name, t in times.items():
        print(f"  {name} {DECODE[name][0]:38s} {t * 1e6:8.0f} us")


if __name__ == "__main__":
    main()
