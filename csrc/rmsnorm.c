/*
rmsnorm.c: RMSNorm over the last axis (Llama, Qwen, Mistral), the CPU kernels behind qkv.rms_norm
and qkv.rms_norm_backward.

x and out are (R, C), contiguous; weight is (C,) or NULL.
out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps). One pass for the sum of squares in the
input dtype with vectorised (8-16 partial sums) reductions, error ~ sqrt(C) ulp, then one pass that
writes. rstd (R,) is written on request, for the backward. Row loops compiled for AVX-512, AVX2 and
baseline (rmsnorm.inc); threads split the rows.

Backward: with g = dy * weight and xhat = x * rstd, dx = rstd * (g - xhat * mean(g * xhat)), row
by row (two passes, see rmsnorm.inc); dweight = sum over rows of dy * xhat goes through fixed row
chunks and a fixed-order sum of their partial rows (qkv_reduce.h): the same bits for any thread
count.
*/
#include <math.h>
#include <stdlib.h>
#include "qkv_common.h"
#include "qkv_reduce.h"
#include "rmsnorm.h"

#define QKV_INC "rmsnorm.inc"
#include "qkv_dtype_instances.h"

#define RMSNORM_DRIVER(T, SFX)                                                                        \
    int qkv_rmsnorm_##SFX(T* out, T* rstd, const T* x, const T* weight, int64_t R, int64_t C, T eps, int simd, \
                          int n_threads) {                                                            \
        if (R < 0 || C <= 0) return QKV_EINVAL;                                                       \
        void (*row)(T*, const T*, const T*, int64_t, T, T*) =                                         \
            simd >= QKV_SIMD_AVX512 ? rmsnorm_row_##SFX##_avx512                                      \
            : simd == QKV_SIMD_AVX2 ? rmsnorm_row_##SFX##_avx2 : rmsnorm_row_##SFX##_scalar;          \
        const int parallel = n_threads > 1 && R * C >= 32768;                                         \
        (void)parallel;                                                                               \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                    \
        for (int64_t r = 0; r < R; r++) row(out + r * C, x + r * C, weight, C, eps, rstd ? rstd + r : NULL); \
        return QKV_OK;                                                                                \
    }

RMSNORM_DRIVER(float, f32)
RMSNORM_DRIVER(double, f64)

// ---------------------------------------------------------------------------------------------
// backward: dx per row; dweight through per-chunk partial rows (C each)

#define RMSNORM_BACKWARD_DRIVER(T, SFX)                                                               \
    int qkv_rmsnorm_backward_##SFX(T* dx, T* dweight, const T* dy, const T* x, const T* weight, const T* rstd, \
                                   int64_t R, int64_t C, T eps, int simd, int n_threads) {            \
        if (R < 0 || C <= 0) return QKV_EINVAL;                                                       \
        if (R == 0) {                                                                                 \
            if (dweight) memset(dweight, 0, (size_t)C * sizeof(T));                                   \
            return QKV_OK;                                                                            \
        }                                                                                             \
        void (*row)(T*, T*, const T*, const T*, const T*, T, int64_t) =                               \
            simd >= QKV_SIMD_AVX512 ? rmsnorm_backward_row_##SFX##_avx512                             \
            : simd == QKV_SIMD_AVX2 ? rmsnorm_backward_row_##SFX##_avx2                               \
                                    : rmsnorm_backward_row_##SFX##_scalar;                            \
        T (*stat)(const T*, int64_t, T) =                                                             \
            simd >= QKV_SIMD_AVX512 ? rmsnorm_rstd_##SFX##_avx512                                     \
            : simd == QKV_SIMD_AVX2 ? rmsnorm_rstd_##SFX##_avx2 : rmsnorm_rstd_##SFX##_scalar;        \
        const int64_t n_chunks = dweight ? qkv_reduce_chunks(R, C) : 1;                               \
        T* partial = dweight ? (T*)malloc((size_t)(n_chunks * C) * sizeof(T)) : NULL;                 \
        if (dweight && !partial) return QKV_ENOMEM;                                                   \
        const int parallel = n_threads > 1 && R * C >= 32768;                                         \
        (void)parallel;                                                                               \
        if (!dweight) {                                                                               \
            QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                \
            for (int64_t r = 0; r < R; r++)                                                           \
                row(dx + r * C, NULL, dy + r * C, x + r * C, weight, rstd ? rstd[r] : stat(x + r * C, C, eps), C); \
            return QKV_OK;                                                                            \
        }                                                                                             \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                    \
        for (int64_t k = 0; k < n_chunks; k++) {                                                      \
            T* dw = partial + k * C;                                                                  \
            memset(dw, 0, (size_t)C * sizeof(T));                                                     \
            int64_t r0, r1;                                                                           \
            qkv_chunk_rows(R, n_chunks, k, &r0, &r1);                                                 \
            for (int64_t r = r0; r < r1; r++)                                                         \
                row(dx + r * C, dw, dy + r * C, x + r * C, weight, rstd ? rstd[r] : stat(x + r * C, C, eps), C); \
        }                                                                                             \
        qkv_sum_partials_##SFX(dweight, partial, n_chunks, C, C, n_threads);                          \
        free(partial);                                                                                \
        return QKV_OK;                                                                                \
    }

RMSNORM_BACKWARD_DRIVER(float, f32)
RMSNORM_BACKWARD_DRIVER(double, f64)
