/*
qkv_common.h: what every CPU kernel file shares.

- Status codes: kernels return int; 0 is success, negative is an error the Cython wrapper turns
  into an exception (QKV_ENOMEM -> MemoryError, QKV_EINVAL -> ValueError).
- SIMD levels. The wheel is portable (no -march=native): each kernel file compiles its hot loops
  three times, under `#pragma GCC target(...)` for AVX-512 and AVX2, and once plain, then picks one
  at run time from the `simd` argument. Python decides that argument once (qkv/_cpu/__init__.py:
  what the CPU supports, capped by QKV_SIMD), so tests can force each path on one machine.
- Threads: kernels take `n_threads` and use it in a num_threads() clause. Python owns the number
  (qkv.set_num_threads), so every extension module agrees without sharing C globals.
- QKV_NEG_INF: -inf without relying on the INFINITY macro (portable to every compiler we use).
*/
#ifndef QKV_COMMON_H
#define QKV_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define QKV_OK 0
#define QKV_ENOMEM (-1)
#define QKV_EINVAL (-2)

#define QKV_SIMD_SCALAR 0
#define QKV_SIMD_AVX2 1
#define QKV_SIMD_AVX512 2

#define QKV_PRAGMA_(x) _Pragma(#x)
#define QKV_PRAGMA(x) QKV_PRAGMA_(x)

#ifdef _OPENMP
#include <omp.h>
#define QKV_OMP(x) QKV_PRAGMA(omp x)
#else
#define QKV_OMP(x)
#endif
// `omp simd` needs only -fopenmp-simd, which setup.py always passes
#define QKV_SIMD_LOOP(x) QKV_PRAGMA(omp simd x)

// The SIMD variants, one place: wrap a block of function definitions in
// QKV_BEGIN_AVX2 ... QKV_END_TARGET and GCC compiles (and vectorises) them for that ISA.
#define QKV_TARGET_AVX2 "avx2,fma,f16c,bmi2"
#define QKV_TARGET_AVX512 "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,f16c,bmi2"
#define QKV_BEGIN_AVX2 _Pragma("GCC push_options") QKV_PRAGMA(GCC target(QKV_TARGET_AVX2))
#define QKV_BEGIN_AVX512 _Pragma("GCC push_options") QKV_PRAGMA(GCC target(QKV_TARGET_AVX512))
#define QKV_END_TARGET _Pragma("GCC pop_options")

#define QKV_CAT_(a, b) a##b
#define QKV_CAT(a, b) QKV_CAT_(a, b)
#define QKV_CAT3(a, b, c) QKV_CAT(QKV_CAT(a, b), c)

static inline float qkv_neg_inf_f(void) { union { uint32_t u; float f; } v = {0xff800000u}; return v.f; }
static inline double qkv_neg_inf_d(void) { union { uint64_t u; double f; } v = {0xfff0000000000000ull}; return v.f; }

// highest SIMD level this CPU (and OS) supports; the caller may ask for less
static inline int qkv_cpu_simd_level(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
        return QKV_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return QKV_SIMD_AVX2;
#endif
    return QKV_SIMD_SCALAR;
}

static inline int qkv_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static inline int qkv_omp_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

#endif  // QKV_COMMON_H
