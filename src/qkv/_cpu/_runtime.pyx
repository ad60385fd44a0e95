# What the compiled CPU backend can do on this machine: SIMD level, OpenMP, thread count.
cdef extern from "qkv_common.h" nogil:
    int qkv_cpu_simd_level()
    int qkv_openmp_enabled()
    int qkv_omp_max_threads()

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
