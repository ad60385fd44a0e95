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
nothing else. A backward kind (``<op>_backward``) returns its tuple of gradients; its forward (for
torch, the autograd graph) is made in setup, so the timed call is the backward alone. tests/test_bench.py runs every method once and checks both rules, so a benchmark
that calls the wrong function fails there.

qkv's ops are called with a preallocated ``out=`` where they take one (the hot-path usage; a fresh
large output costs page faults on every call, see BENCHMARKS.md on the allocator). GPU work is
synchronised inside every timed function.

The implementations (Impl), the work counts, the error measure and the timer are qkv bench's, from
qkv._bench, so the two cannot drift apart. asv runs today's benchmarks against older builds: `asv run`
over history reaches back to the first commit whose qkv._bench has Impl(name, dtype) (a build without it
fails at import, loudly, rather than measuring something else).
"""

import functools
import os
import timeit

import numpy as np

import qkv  # imported here so that asv's forkserver loads it once, not once per benchmark
from qkv import _bench
from qkv._bench import attention_flops, linear_flops, max_abs_err  # noqa: F401  (re-exported)

try:  # came with the backward ops; on an older qkv (asv over history) the backward benchmarks skip
    from qkv._bench import attention_backward_flops, linear_backward_flops, torch_backward, torch_leaves  # noqa: F401
except ImportError:
    attention_backward_flops = linear_backward_flops = torch_backward = torch_leaves = None

IMPLS = ["cpu", "numpy", "cuda", "torch"]
XL = os.environ.get("QKV_BENCH_XL", "") == "1"

# seeds per input role (append only)
SEED_X, SEED_Q, SEED_K, SEED_V, SEED_W1, SEED_W2, SEED_B1, SEED_B2, SEED_G, SEED_IDS = range(10)
SEED_DY = 10  # upstream gradients of the backward benchmarks


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


def require_backward(impl, op):
    """Skip unless this qkv has the backward ``op`` (asv runs today's suite against older builds too)."""
    if torch_backward is None:
        skip("this qkv predates the backward ops")
    impl.require_op(op)


def require_xl(condition, what):
    """Skip an XL combination unless QKV_BENCH_XL=1."""
    if condition and not XL:
        skip(f"{what}: XL size, set QKV_BENCH_XL=1 to run it")


# ---------------------------------------------------------------------------------------------
# implementations: qkv._bench.Impl (shared with ``qkv bench``), with the backend forced for the
# benchmark's lifetime: asv calls the ops from several methods, so no ``with`` block fits


class Impl(_bench.Impl):
    """One implementation under test (qkv._bench.Impl: ``ops``, ``asarray``, ``empty``, ``to_numpy``,
    ``sync``, ``require_op``; its Unavailable is a NotImplementedError, i.e. a skip). For qkv's
    backends ``impl.ops`` is the ``qkv`` module with ``name`` set as the backend until ``close()``."""

    def __init__(self, name, dtype):
        super().__init__(name, dtype)
        if not self.is_torch:
            qkv.set_backend(name)

    def close(self):
        if not self.is_torch:
            qkv.set_backend("auto")


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
# work counts and timing: qkv bench's (attention_flops, linear_flops, their *_backward_flops,
# max_abs_err, _bench.time_call;
# not imported by that name: asv would take a module-level time_* for a benchmark)


def mlp_flops(M, C, H):
    return linear_flops(M, C, H) + linear_flops(M, H, C)


def gflops(flops, seconds):
    return flops / seconds / 1e9


def best_time(fn, sync, min_time=0.2, max_calls=50, min_calls=3):
    """Median wall time of fn() (synchronised), after one warm-up, for track_* benchmarks."""
    return float(_bench.time_call(fn, sync, min_time, min_calls, max_calls=max_calls))
