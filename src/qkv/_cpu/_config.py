"""Run-time settings of the compiled CPU backend: thread count and SIMD level. This module owns them;
qkv._config re-exports them for the public API (qkv.get_num_threads, qkv.set_num_threads).

Threads: qkv's OpenMP kernels use ``get_num_threads()`` threads. The default honours
``OMP_NUM_THREADS`` (through OpenMP's own reading of it), else the CPUs this process may run on.
``set_num_threads(n)`` changes it for qkv's kernels and for the BLAS that ``qkv.linear`` calls
(SciPy's), through threadpoolctl.

SIMD: kernels use the best level the CPU supports (AVX-512 > AVX2 > scalar), capped by the
environment variable ``QKV_SIMD`` (``avx512``, ``avx2`` or ``scalar``) or ``set_simd_level``;
tests use the cap to run every code path on one machine.
"""

import os
import threading

from qkv._cpu import _runtime

SIMD_NAMES = _runtime.SIMD_NAMES
_lock = threading.Lock()
_n_threads = None
_simd_cap = None
_env_level = None  # the level QKV_SIMD and the CPU allow, read at the first call


def _default_threads():
    if not _runtime.openmp_enabled():
        return 1
    if "OMP_NUM_THREADS" in os.environ:
        return max(1, _runtime.omp_max_threads())
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def get_num_threads():
    """Number of threads qkv's CPU kernels use."""
    global _n_threads
    if _n_threads is None:
        with _lock:
            if _n_threads is None:
                from qkv._cpu._linear import set_blas_thread_control

                set_blas_thread_control(*blas_thread_control())  # once: GEMMs pick their threads by size
                _n_threads = _default_threads()
    return _n_threads


def set_num_threads(n):
    """Set the number of threads for qkv's CPU kernels (and the BLAS behind ``qkv.linear``).

    ``n`` is a positive int; ``None`` restores the default. Without OpenMP it is always 1.
    """
    global _n_threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"set_num_threads: n must be a positive int or None, got {n!r}")
    with _lock:
        _n_threads = _default_threads() if n is None else (n if _runtime.openmp_enabled() else 1)
        _limit_scipy_blas(_n_threads)


def _scipy_blas():
    """threadpoolctl's controllers of the BLAS that scipy.linalg.cython_blas resolves to (not NumPy's)."""
    from threadpoolctl import ThreadpoolController

    import scipy.linalg.cython_blas  # noqa: F401  (loaded, so threadpoolctl sees it)

    return [lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and "scipy" in os.path.basename(os.path.dirname(lib.filepath)).lower()]


def _limit_scipy_blas(n):
    """Limit SciPy's BLAS to n threads."""
    try:
        for lib in _scipy_blas():
            lib.set_num_threads(n)
    except Exception:  # threadpoolctl missing or unable: BLAS keeps its own setting
        pass


def blas_thread_control():
    """(get, set) addresses of SciPy's OpenBLAS openblas_get/set_num_threads, or (0, 0) when it is
    not OpenBLAS or cannot be found: what qkv.linear's GEMMs use to pick their threads by size
    (qkv._cpu._linear)."""
    try:
        import ctypes

        for lib in _scipy_blas():
            if lib.internal_api != "openblas":
                continue
            dll = ctypes.CDLL(lib.filepath)
            prefix, suffix = getattr(lib, "_symbol_prefix", ""), getattr(lib, "_symbol_suffix", "")
            get = getattr(dll, f"{prefix}openblas_get_num_threads{suffix}")
            put = getattr(dll, f"{prefix}openblas_set_num_threads{suffix}")
            return ctypes.cast(get, ctypes.c_void_p).value, ctypes.cast(put, ctypes.c_void_p).value
    except Exception:  # no threadpoolctl, another BLAS, or symbols not found: threads stay as set
        pass
    return 0, 0


def simd_level():
    """The SIMD level the kernels will use: 0 scalar, 1 avx2, 2 avx512."""
    if _simd_cap is not None:
        return min(_simd_cap, _runtime.cpu_simd_level())
    global _env_level
    if _env_level is None:  # QKV_SIMD is read once (every kernel call asks; os.environ is slow)
        env = os.environ.get("QKV_SIMD", "").strip().lower()
        cap = SIMD_NAMES.index(env) if env in SIMD_NAMES else len(SIMD_NAMES) - 1
        _env_level = min(cap, _runtime.cpu_simd_level())
    return _env_level


def simd_name():
    return SIMD_NAMES[simd_level()]


def set_simd_level(name):
    """Cap the SIMD level ("avx512", "avx2", "scalar"), or ``None`` for the best available."""
    global _simd_cap
    if name is None:
        _simd_cap = None
        return
    if name not in SIMD_NAMES:
        raise ValueError(f"set_simd_level: name must be one of {SIMD_NAMES} or None, got {name!r}")
    _simd_cap = SIMD_NAMES.index(name)
