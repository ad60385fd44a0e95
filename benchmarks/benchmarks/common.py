"""Shared pieces of the qkv asv suite: inputs, implementations, skips, FLOP counts.

Every benchmark class takes ``backend`` as a parameter with the same static values, IMPLS:
- ``cpu``    qkv's compiled C kernels (NumPy arrays);
- ``numpy``  qkv's NumPy reference (the oracle), forced with qkv.set_backend("numpy");
- ``cuda``   qkv's CUDA kernels (CuPy arrays), when CuPy sees a device;
- ``torch``  PyTorch on the CPU (SDPA, nn.Linear + GELU, LayerNorm, transformers models), when
             torch is installed. A baseline, so that ratios come from one run.
A combination that cannot run here (no torch, no GPU, a dtype the backend lacks, an op not built
yet) is skipped by raising NotImplementedError in ``setup``; params never depend on the
environment (asv needs them identical everywhere). XL sizes are listed in the params too and skip
unless QKV_BENCH_XL=1.

Inputs are deterministic and cached per process: ``rand(shape, dtype, seed)`` always returns the
same array. The seeds below must not be changed, only appended to, or history breaks.

Each benchmark module has a case class (name starting with "_", so asv ignores it) that holds
``make_inputs``, ``run(kind)`` (the call under test, per implementation) and ``expected(kind)``
(the NumPy oracle). Method names carry the kind they measure: ``time_<kind>``, ``track_gflops_<kind>``,
``track_gbps_<kind>``, ``track_max_abs_err_<kind>`` and ``peakmem_<kind>`` call ``run(<kind>)`` and
nothing else. tests/test_bench.py runs every method once and checks both rules, so a benchmark
that calls the wrong function fails there.

qkv's ops are called with a preallocated ``out=`` where they take one (the hot-path usage; a fresh
large output costs page faults on every call, see BENCHMARKS.md on the allocator). GPU work is
synchronised inside every timed function.

This file touches no private module of qkv beyond the backend table: asv runs today's benchmarks
against older builds.
"""

import functools
import importlib
import os
import timeit

import numpy as np

import qkv  # imported here so that asv's forkserver loads it once, not once per benchmark

IMPLS = ["cpu", "numpy", "cuda", "torch"]
QKV_BACKENDS = ("cpu", "numpy", "cuda")
XL = os.environ.get("QKV_BENCH_XL", "") == "1"

# seeds per input role (append only)
SEED_X, SEED_Q, SEED_K, SEED_V, SEED_W1, SEED_W2, SEED_B1, SEED_B2, SEED_G, SEED_IDS = range(10)


# ---------------------------------------------------------------------------------------------
# inputs


@functools.lru_cache(maxsize=64)
def _rand_cached(shape, dtype, seed, scale):
    rng = np.random.default_rng(1234 + seed)
    a = (rng.standard_normal(shape, dtype=np.float64) * scale).astype(dtype)
    a.setflags(write=False)  # shared between benchmarks: nobody may write into it
    return a


def rand(shape, dtype="float32", seed=SEED_X, scale=1.0):
    """Deterministic standard-normal array (read-only, cached)."""
    return _rand_cached(tuple(int(s) for s in shape), np.dtype(dtype).name, int(seed), float(scale))


def token_ids(shape, vocab, seed=SEED_IDS):
    rng = np.random.default_rng(1234 + seed)
    return rng.integers(0, vocab, size=shape, dtype=np.int64)


def skip(reason):
    raise NotImplementedError(reason)


def require_xl(condition, what):
    """Skip an XL combination unless QKV_BENCH_XL=1."""
    if condition and not XL:
        skip(f"{what}: XL size, set QKV_BENCH_XL=1 to run it")


# ---------------------------------------------------------------------------------------------
# implementations


class Impl:
    """One implementation under test: array conversion, synchronisation and the ops namespace.

    ``impl.ops`` is the ``qkv`` module for the qkv backends (with the backend forced) and ``torch``
    for torch; ``impl.asarray(a)`` moves a NumPy array to the implementation's device/type;
    ``impl.sync()`` waits for queued device work.
    """

    def __init__(self, name, dtype):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.is_torch = name == "torch"
        if self.is_torch:
            self.ops = _import_torch()
            if self.dtype == np.float16:
                skip("torch CPU baseline runs float32/float64 only")
            self.tdtype = getattr(self.ops, self.dtype.name)
        else:
            self.ops = _require_qkv_backend(name, self.dtype)
        self.xp = _cupy() if name == "cuda" else np

    def asarray(self, a):
        if self.is_torch:
            return self.ops.from_numpy(np.array(a, dtype=self.dtype))  # a writeable copy
        return self.xp.asarray(np.asarray(a, dtype=self.dtype))

    def empty(self, shape):
        return self.xp.empty(shape, dtype=self.dtype)

    def to_numpy(self, a):
        if self.is_torch:
            return a.detach().numpy()
        if self.name == "cuda":
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def sync(self):
        if self.name == "cuda":
            self.xp.cuda.get_current_stream().synchronize()

    def require_op(self, op):
        """Skip when this qkv backend has no ``op`` yet (it lands in a later version)."""
        if self.is_torch:
            return
        backend_module = importlib.import_module(qkv._backend._MODULES[self.name])
        if not hasattr(backend_module, op):
            skip(f"backend {self.name!r} has no {op} in this version of qkv")

    def close(self):
        if not self.is_torch:
            qkv.set_backend("auto")


def _import_torch():
    try:
        import torch
    except ImportError:
        skip("torch is not installed")
    torch.set_num_threads(qkv.get_num_threads())  # same thread count on both sides
    return torch


def _cupy():
    import cupy

    return cupy


def _require_qkv_backend(name, dtype):
    info = qkv.backends().get(name)
    if info is None:
        skip(f"qkv has no backend {name!r} in this version")
    if not info["available"]:
        skip(f"backend {name!r} unavailable: {info['reason']}")
    module = importlib.import_module(qkv._backend._MODULES[name])
    if dtype not in module.DTYPES:
        skip(f"backend {name!r} does not support {dtype}")
    if name == "numpy" and dtype == np.float16:
        skip("the NumPy reference computes in float64 whatever the dtype: float16 adds nothing")
    qkv.set_backend(name)
    return qkv


class Benchmark:
    """Base class: wall-clock timer, generous timeout, ``self.impl`` released in teardown.

    Sampling is kept modest so that a full ``asv run`` fits a 2-core machine: one round, 1 to 7
    samples and at most ~5 s of sampling per parameter set (asv's defaults are 2 rounds, 10, 20 s).
    """

    timer = timeit.default_timer
    timeout = 180
    rounds = 1
    repeat = (1, 7, 5.0)
    warmup_time = 0.2
    impl = None

    def teardown(self, *params):
        if self.impl is not None:
            self.impl.close()


# ---------------------------------------------------------------------------------------------
# work counts: FLOPs and bytes per call (also what qkv bench uses; tests check they agree)


def attention_flops(B, Hq, Lq, Lk, D, causal):
    """FlashAttention's convention: 4*B*H*Lq*Lk*D (QK^T and PV), halved for square causal.

    For causal with Lq != Lk (bottom-right aligned, e.g. decoding), count the visible pairs.
    """
    if not causal:
        pairs = Lq * Lk
    elif Lq == Lk:
        pairs = Lq * Lk / 2
    else:
        shift = Lk - Lq
        i = np.arange(Lq)
        pairs = float(np.clip(i + shift + 1, 0, Lk).sum())
    return 4.0 * B * Hq * pairs * D


def linear_flops(M, K, N):
    return 2.0 * M * K * N


def mlp_flops(M, C, H):
    return linear_flops(M, C, H) + linear_flops(M, H, C)


def gflops(flops, seconds):
    return flops / seconds / 1e9


def best_time(fn, sync, min_time=0.2, max_calls=50, min_calls=3):
    """Median wall time of fn() (synchronised), after one warm-up, for track_* benchmarks."""
    fn()
    sync()
    times = []
    total = 0.0
    while len(times) < min_calls or (total < min_time and len(times) < max_calls):
        t0 = timeit.default_timer()
        fn()
        sync()
        dt = timeit.default_timer() - t0
        times.append(dt)
        total += dt
    return float(np.median(times))


def max_abs_err(actual, expected):
    """max |actual - expected| over finite entries, computed in float64."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    return float(np.max(np.abs(a - e)))
