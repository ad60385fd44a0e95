"""The measurements behind ``qkv bench``: headline shapes, timing, work counts, the results table.

For people without asv: one command answers "how fast is qkv here, against what?". For each headline
case and each implementation that can run here (qkv's ``cpu`` and ``cuda`` backends, the ``numpy``
reference, and torch on the CPU when it is installed) it
1. checks the output against the NumPy oracle (max |error|, reported with the time);
2. times the call: one warm-up, then repeats until a time budget is spent, median;
3. converts to GFLOP/s (GEMM-like work) or GB/s (memory-bound work), to % of this machine's SGEMM
   peak measured in the same run, and to speed-ups against NumPy and torch.
Work counts: GEMM 2*M*K*N; attention 4*B*H*Lq*Lk*D, halved for square causal (FlashAttention's
convention; the asv suite's benchmarks/benchmarks/common.py uses the same formulas, a test checks).

qkv's ops get a preallocated ``out=`` (the hot-path usage); torch allocates its outputs. A fresh
large output costs page faults on every call, so the allocator setting is reported too.
"""

import os
import platform
import statistics
import sys
import time

import numpy as np

IMPLS = ("cpu", "cuda", "numpy", "torch")


# ---------------------------------------------------------------------------------------------
# work counts


def attention_flops(B, Hq, Lq, Lk, D, causal):
    """4*B*Hq*Lq*Lk*D, halved for square causal; bottom-right causal with Lq != Lk counts visible pairs."""
    if not causal:
        pairs = Lq * Lk
    elif Lq == Lk:
        pairs = Lq * Lk / 2
    else:
        i = np.arange(Lq)
        pairs = float(np.clip(i + (Lk - Lq) + 1, 0, Lk).sum())
    return 4.0 * B * Hq * pairs * D


def linear_flops(M, K, N):
    return 2.0 * M * K * N


# ---------------------------------------------------------------------------------------------
# implementations


class Unavailable(Exception):
    """This implementation cannot run this case here; the message says why."""


class Impl:
    """Array conversion, synchronisation and the namespace for one implementation."""

    def __init__(self, name):
        self.name = name
        self.is_torch = name == "torch"
        self.xp = np
        if self.is_torch:
            try:
                import torch
            except ImportError:
                raise Unavailable("torch is not installed") from None
            import qkv

            torch.set_num_threads(qkv.get_num_threads())
            self.ops = torch
        else:
            import qkv

            info = qkv.backends()[name]
            if not info["available"]:
                raise Unavailable(info["reason"])
            self.ops = qkv
            if name == "cuda":
                import cupy

                self.xp = cupy

    def asarray(self, a):
        if self.is_torch:
            return self.ops.from_numpy(np.array(a))
        return self.xp.asarray(a)

    def empty(self, shape, dtype=np.float32):
        return self.xp.empty(shape, dtype=dtype)

    def to_numpy(self, a):
        if self.is_torch:
            return a.detach().numpy()
        if self.name == "cuda":
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def sync(self):
        if self.name == "cuda":
            self.xp.cuda.get_current_stream().synchronize()

    def context(self):
        """A ``with`` block in which calls run on this implementation (qkv's backend forced; torch without autograd)."""
        if self.is_torch:
            return self.ops.no_grad()
        return self.ops.use_backend(self.name)


# ---------------------------------------------------------------------------------------------
# headline cases


def _rand(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


class Case:
    """One headline shape: inputs, the work it does, and how each implementation runs it."""

    name = shape = op = ""
    flops = 0.0  # useful floating-point work per call (0: memory-bound, report GB/s)
    nbytes = 0.0  # bytes that must move per call

    def build(self, impl):
        """A zero-argument callable that runs the case once on impl and returns the output."""
        raise NotImplementedError

    def oracle(self):
        import qkv

        with qkv.use_backend("numpy"):
            return self.build(Impl("numpy"))()  # a fresh output: build() gives each implementation its own


class SoftmaxMasked(Case):
    name, shape, op = "softmax_masked", "causal [12*512, 512]", "softmax"

    def __init__(self, rng):
        self.x = _rand(rng, (12, 512, 512), 4.0)  # (H, L, L) scores: 12*512 rows of 512
        self.nbytes = 2 * self.x.nbytes

    def build(self, impl):
        x = impl.asarray(self.x)
        if impl.is_torch:
            torch = impl.ops
            add = torch.triu(torch.full((512, 512), float("-inf")), diagonal=1)
            return lambda: torch.softmax(x + add, dim=-1)
        out = impl.empty(x.shape)
        return lambda: impl.ops.softmax(x, causal=True, out=out)


class LayerNorm(Case):
    name, shape, op = "layer_norm", "[512, 768]", "layer_norm"

    def __init__(self, rng):
        self.x, self.w, self.b = _rand(rng, (512, 768)), 1 + _rand(rng, (768,), 0.1), _rand(rng, (768,), 0.1)
        self.nbytes = 2 * self.x.nbytes

    def build(self, impl):
        x, w, b = (impl.asarray(a) for a in (self.x, self.w, self.b))
        if impl.is_torch:
            F = impl.ops.nn.functional
            return lambda: F.layer_norm(x, (768,), w, b, eps=1e-5)
        out = impl.empty(x.shape)
        return lambda: impl.ops.layer_norm(x, w, b, eps=1e-5, out=out)


class LinearGELU(Case):
    name, shape, op = "linear_gelu", "[512, 768] x [768, 3072]", "linear"
    flops = linear_flops(512, 768, 3072)

    def __init__(self, rng):
        self.x, self.w, self.b = _rand(rng, (512, 768)), _rand(rng, (768, 3072), 768**-0.5), _rand(rng, (3072,), 0.1)
        self.nbytes = self.x.nbytes + self.w.nbytes + 512 * 3072 * 4

    def build(self, impl):
        x, w, b = (impl.asarray(a) for a in (self.x, self.w, self.b))
        if impl.is_torch:
            torch = impl.ops
            fc = torch.nn.Linear(768, 3072)
            with torch.no_grad():
                fc.weight.copy_(w.T)
                fc.bias.copy_(b)
            return lambda: torch.nn.functional.gelu(fc(x), approximate="tanh")
        out = impl.empty((512, 3072))
        return lambda: impl.ops.linear(x, w, b, activation="gelu_tanh", out=out)


class Attention(Case):
    op = "attention"

    def __init__(self, rng, Lq, Lk, causal, name, shape, H=12, D=64):
        self.name, self.shape, self.causal = name, shape, causal
        self.q = _rand(rng, (1, H, Lq, D))  # (B, H, Lq, D)
        self.k, self.v = _rand(rng, (1, H, Lk, D)), _rand(rng, (1, H, Lk, D))  # (B, H, Lk, D)
        self.flops = attention_flops(1, H, Lq, Lk, D, causal)
        self.nbytes = self.q.nbytes * 2 + self.k.nbytes + self.v.nbytes
        self.square = Lq == Lk

    def build(self, impl):
        q, k, v = (impl.asarray(a) for a in (self.q, self.k, self.v))
        if impl.is_torch:
            sdpa = impl.ops.nn.functional.scaled_dot_product_attention
            # torch's is_causal is top-left aligned: the same as ours for Lq == Lk; for one query
            # against a cache (bottom-right) every key is visible
            is_causal = self.causal and self.square
            return lambda: sdpa(q, k, v, is_causal=is_causal)
        out = impl.empty(q.shape)
        causal = self.causal
        return lambda: impl.ops.attention(q, k, v, causal=causal, out=out)


class Decode(Attention):
    """Memory-bound: one query reads the whole K/V cache; GB/s is the figure to watch."""

    def __init__(self, rng):
        super().__init__(rng, 1, 4096, True, "decode", "Lq=1 Lk=4096 H=12 D=64")
        self.flops = 0.0


def headline_cases(seed=0):
    rng = np.random.default_rng(seed)
    return [
        SoftmaxMasked(rng),
        LayerNorm(rng),
        LinearGELU(rng),
        Attention(rng, 1024, 1024, False, "attention", "B=1 H=12 L=1024 D=64"),
        Attention(rng, 1024, 1024, True, "attention_causal", "B=1 H=12 L=1024 D=64"),
        Decode(rng),
    ]


CASE_NAMES = ("softmax_masked", "layer_norm", "linear_gelu", "attention", "attention_causal", "decode")


# ---------------------------------------------------------------------------------------------
# timing


def time_call(fn, sync, budget, min_calls, best=False):
    """Median (or with ``best``, minimum) seconds of fn() after one warm-up; repeats until ``budget``
    seconds and ``min_calls``."""
    fn()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < budget:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    return min(times) if best else statistics.median(times)


def _no_sync():
    pass


def sgemm_peak(n, budget, min_calls):
    """This machine's float32 GEMM peak now: the fastest call of NumPy's matmul and of qkv.linear
    (SciPy's BLAS), n x n x n. A peak is what the machine can do, so the best call counts, not the median."""
    import qkv

    rng = np.random.default_rng(1)
    a, b = _rand(rng, (n, n)), _rand(rng, (n, n))
    out = np.empty((n, n), np.float32)
    flops = linear_flops(n, n, n)
    rates = {
        "numpy.matmul": flops / time_call(lambda: np.matmul(a, b, out=out), _no_sync, budget, min_calls, best=True) / 1e9,
        "qkv.linear": flops / time_call(lambda: qkv.linear(a, b, out=out), _no_sync, budget, min_calls, best=True) / 1e9,
    }
    return max(rates.values()), rates


# ---------------------------------------------------------------------------------------------
# the run


def machine_facts():
    """Versions, threads, the BLAS kernels loaded (threadpoolctl) and the allocator setting."""
    from qkv.commands.info import collect

    facts = collect()
    facts["cpu_model"] = _cpu_model()
    libc = platform.libc_ver()
    facts["allocator"] = {
        "libc": " ".join(libc).strip() or "unknown",
        **{k: os.environ.get(k, "default") for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                                                     "MALLOC_ARENA_MAX")},
        "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""),
    }
    facts["env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS")
                    if k in os.environ}
    try:
        import torch

        facts["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}
    except ImportError:
        facts["torch"] = None
    facts["date_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    return facts


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Progress:
    """A one-line progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total, stream=None):
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()

    def step(self, label):
        if self.live:
            width = 30
            fill = int(width * self.done / max(1, self.total))
            self.stream.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} {label:<32}")
            self.stream.flush()
        self.done += 1

    def close(self):
        if self.live:
            self.stream.write("\r" + " " * 80 + "\r")
            self.stream.flush()


def run(quick=False, cases=None, impls=IMPLS, progress=True):
    """Measure; returns the report dict that ``qkv bench --json`` writes."""
    budget, min_calls = (0.15, 3) if quick else (1.0, 7)
    chosen = [c for c in headline_cases() if cases is None or c.name in cases]
    bar = Progress(2 + len(chosen) * len(impls)) if progress else Progress(0, stream=_Null())
    bar.step("SGEMM peak")
    n_gemm = 1024 if quick else 2048
    peak, peak_rates = sgemm_peak(n_gemm, budget, min_calls)
    impl_objs = {}
    for name in impls:
        try:
            impl_objs[name] = Impl(name)
        except Unavailable as exc:
            impl_objs[name] = exc
    results = []
    for case in chosen:
        expected = case.oracle()
        rows = {}
        for name in impls:
            bar.step(f"{case.name} / {name}")
            rows[name] = _measure(case, impl_objs[name], name, expected, budget, min_calls)
        for name, r in rows.items():
            if r["status"] != "ok":
                continue
            r["gflops"] = case.flops / r["seconds"] / 1e9 if case.flops else None
            r["gbps"] = case.nbytes / r["seconds"] / 1e9
            r["pct_of_peak"] = 100.0 * r["gflops"] / peak if case.flops else None
            for base in ("numpy", "torch"):
                b = rows.get(base)
                ok = b is not None and b["status"] == "ok" and name != base
                r[f"speedup_vs_{base}"] = b["seconds"] / r["seconds"] if ok else None
        results.extend(rows.values())
    # measured before and after the cases (the best of both), so a busy moment does not define the peak
    bar.step("SGEMM peak, again")
    peak_after, rates_after = sgemm_peak(n_gemm, budget, min_calls)
    peak_rates = {k: max(v, rates_after[k]) for k, v in peak_rates.items()}
    if peak_after > peak:
        peak = peak_after
        for r in results:
            if r.get("gflops"):
                r["pct_of_peak"] = 100.0 * r["gflops"] / peak
    bar.close()
    return {"quick": quick, "sgemm_peak_gflops": peak, "sgemm_rates": peak_rates, "machine": machine_facts(),
            "results": results}


class _Null:
    def write(self, s):
        pass

    def flush(self):
        pass


def _measure(case, impl, name, expected, budget, min_calls):
    row = {"case": case.name, "shape": case.shape, "backend": name, "dtype": "float32"}
    if isinstance(impl, Exception):
        return {**row, "status": "skipped", "reason": str(impl)}
    if not impl.is_torch:
        import importlib

        from qkv import _backend

        if not hasattr(importlib.import_module(_backend._MODULES[name]), case.op):
            return {**row, "status": "skipped", "reason": f"backend {name!r} has no {case.op} in this version"}
    try:
        with impl.context():
            fn = case.build(impl)
            got = impl.to_numpy(fn())
            row["max_abs_err"] = float(np.max(np.abs(got.astype(np.float64) - np.asarray(expected, np.float64))))
            row["seconds"] = time_call(fn, impl.sync, budget, min_calls)
        row["status"] = "ok"
    except Exception as exc:  # one broken case must not hide the others; run() reports it
        row.update(status="error", reason=f"{type(exc).__name__}: {exc}")
    return row


# ---------------------------------------------------------------------------------------------
# the table


def _fmt_time(s):
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} us"


def _fmt(v, spec, suffix=""):
    return "-" if v is None else f"{v:{spec}}{suffix}"


def backends_absent(report):
    """{backend: reason} for implementations skipped in every case for one reason (e.g. no CuPy)."""
    by = {}
    for r in report["results"]:
        by.setdefault(r["backend"], set()).add(r.get("reason") if r["status"] == "skipped" else None)
    return {name: next(iter(reasons)) for name, reasons in by.items() if len(reasons) == 1 and None not in reasons}


def format_table(report):
    m = report["machine"]
    lines = []
    blas = ", ".join(f"{b.get('library')} {b.get('version')} ({b.get('kernel')}, {b.get('threads')} threads)"
                     for b in m["blas"] if "error" not in b) or "unknown"
    alloc = m["allocator"]
    lines.append(f"qkv {m['qkv']}  Python {m['python']}  NumPy {m['numpy']}  SciPy {m['scipy']}  "
                 f"torch {m['torch']['version'] if m['torch'] else 'not installed'}  {m['date_utc']} UTC")
    lines.append(f"machine {m.get('cpu_model', m['machine'])}, {m['threads']} threads, SIMD {m['simd']['in_use']}; BLAS: {blas}")
    lines.append(f"allocator: {alloc['libc']}, MALLOC_TRIM_THRESHOLD_={alloc['MALLOC_TRIM_THRESHOLD_']}, "
                 f"MALLOC_MMAP_THRESHOLD_={alloc['MALLOC_MMAP_THRESHOLD_']}")
    rates = ", ".join(f"{k} {v:.0f}" for k, v in report["sgemm_rates"].items())
    lines.append(f"SGEMM peak measured now: {report['sgemm_peak_gflops']:.0f} GFLOP/s ({rates})")
    lines.append("")
    head = (f"{'case':<17} {'shape':<26} {'backend':<7} {'time':>9} {'GFLOP/s':>8} {'GB/s':>7} {'% peak':>7} "
            f"{'vs NumPy':>9} {'vs torch':>9} {'max err':>8}")
    lines.append(head)
    lines.append("-" * len(head))
    absent = backends_absent(report)
    for r in report["results"]:
        if r["backend"] in absent:
            continue
        if r["status"] != "ok":
            lines.append(f"{r['case']:<17} {r['shape']:<26} {r['backend']:<7} {r['status']}: {r['reason'][:70]}")
            continue
        lines.append(
            f"{r['case']:<17} {r['shape']:<26} {r['backend']:<7} {_fmt_time(r['seconds']):>9} "
            f"{_fmt(r['gflops'], '.1f'):>8} {_fmt(r['gbps'], '.1f'):>7} {_fmt(r['pct_of_peak'], '.0f', '%'):>7} "
            f"{_fmt(r['speedup_vs_numpy'], '.2f', 'x'):>9} {_fmt(r['speedup_vs_torch'], '.2f', 'x'):>9} "
            f"{r['max_abs_err']:>8.1e}"
        )
    for name, reason in absent.items():
        lines.append(f"{name}: not measured ({reason})")
    if any((r.get("pct_of_peak") or 0) > 100 for r in report["results"]):
        lines.append("warning: some rows beat the measured SGEMM peak, so the machine was busy while it was "
                     "measured; re-run on a quiet machine")
    lines.append("")
    lines.append("GFLOP/s: GEMM 2*M*K*N, attention 4*B*H*Lq*Lk*D (halved for causal); % peak of the SGEMM rate "
                 "above. vs X: X's time / this time.")
    return "\n".join(lines)
