# What the compiled CPU backend can do on this machine: SIMD level, OpenMP, thread count, and the
# float32 arithmetic peak of a SIMD level (csrc/fma_peak.c), the roofline qkv bench reports against.
from libc.stdint cimport int64_t
from time import perf_counter

cdef extern from "qkv_common.h" nogil:
    int qkv_cpu_simd_level()
    int qkv_openmp_enabled()
    int qkv_omp_max_threads()

cdef extern from "fma_peak.h" nogil:
    double qkv_fma_chains(int simd, int n_threads, int64_t n_steps, float* sink)

SIMD_NAMES = ("scalar", "avx2", "avx512")


def cpu_simd_level():
    """Highest SIMD level the CPU and OS support: 0 scalar, 1 AVX2+FMA, 2 AVX-512 (F/DQ/VL/BW)."""
    return qkv_cpu_simd_level()


def openmp_enabled():
    """True if the extensions were built with OpenMP."""
    return bool(qkv_openmp_enabled())


def omp_max_threads():
    """OpenMP's default team size (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return qkv_omp_max_threads()


cdef double _chains_seconds(int simd, int n_threads, int64_t n_steps, double* flops):
    cdef float sink = 0
    t = perf_counter()
    with nogil:
        flops[0] = qkv_fma_chains(simd, n_threads, n_steps, &sink)
    return perf_counter() - t


def fma_peak_gflops(int simd, int n_threads, double seconds=0.05, int repeats=3):
    """Measured float32 peak in GFLOP/s of SIMD level ``simd`` (0 scalar, 1 AVX2, 2 AVX-512; capped at
    what the CPU supports) on ``n_threads`` threads: independent FMA chains in registers, each call
    lasting about ``seconds``, best of ``repeats`` calls (a peak is what the machine can do). The GIL
    is released while the chains run. Without OpenMP it is the one-thread figure whatever n_threads.
    """
    if simd < 0 or simd > 2:
        raise ValueError(f"fma_peak_gflops: simd must be 0, 1 or 2, got {simd}")
    if n_threads < 1:
        raise ValueError(f"fma_peak_gflops: n_threads must be >= 1, got {n_threads}")
    if not seconds > 0 or repeats < 1:
        raise ValueError(f"fma_peak_gflops: seconds must be > 0 and repeats >= 1, got {seconds}, {repeats}")
    cdef double flops = 0, t
    cdef int64_t n = 256
    while True:  # calibrate the steps for ~seconds a call (the faster of two: one may be preempted)
        n *= 4
        t = min(_chains_seconds(simd, n_threads, n, &flops), _chains_seconds(simd, n_threads, n, &flops))
        if t >= seconds / 8 or n >= (<int64_t>1 << 40):
            break
    n = max(n, <int64_t>(n * seconds / t))
    best = 0.0
    for _ in range(repeats):
        t = _chains_seconds(simd, n_threads, n, &flops)
        best = max(best, flops / t / 1e9)
    return best
