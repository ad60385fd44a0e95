/*
layernorm.c: layer norm over the last axis, the CPU kernels behind qkv.layer_norm and
qkv.layer_norm_backward.

x and out are (R, C), contiguous; weight and bias are (C,) or NULL.
out = (x - mean) / sqrt(var + eps) * weight + bias, with the biased variance (as PyTorch and
GPT-2/BERT use). Two-pass statistics in the input dtype with vectorised (so pairwise-ish, 8-16
partial sums) reductions; error ~ sqrt(C) ulp. mean and rstd = 1/sqrt(var + eps) (R,) are written
on request, for the backward. Row loops compiled for AVX-512, AVX2 and baseline (layernorm.inc),
threads split the rows.

Backward: dx row by row (two passes, see layernorm.inc); dweight = sum over rows of dy * xhat and
dbias = sum over rows of dy go through fixed row chunks and a fixed-order sum of their partial
rows (qkv_reduce.h), so they are the same bits for any thread count.
*/
#include <math.h>
#include <stdlib.h>
#include "qkv_common.h"
#include "qkv_reduce.h"
#include "layernorm.h"

#define QKV_INC "layernorm.inc"
#include "qkv_dtype_instances.h"

#define LAYERNORM_DRIVER(T, SFX)                                                                      \
    int qkv_layernorm_##SFX(T* out, T* mean, T* rstd, const T* x, const T* weight, const T* bias,       \
                            int64_t R, int64_t C, T eps, int simd, int n_threads) {                   \
        if (R < 0 || C <= 0) return QKV_EINVAL;                                                       \
        void (*row)(T*, const T*, const T*, const T*, int64_t, T, T*, T*) =                           \
            simd >= QKV_SIMD_AVX512 ? layernorm_row_##SFX##_avx512                                    \
            : simd == QKV_SIMD_AVX2 ? layernorm_row_##SFX##_avx2 : layernorm_row_##SFX##_scalar;      \
        const int parallel = n_threads > 1 && R * C >= 32768;                                         \
        (void)parallel;                                                                               \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                    \
        for (int64_t r = 0; r < R; r++)                                                               \
            row(out + r * C, x + r * C, weight, bias, C, eps, mean ? mean + r : NULL, rstd ? rstd + r : NULL); \
        return QKV_OK;                                                                                \
    }

LAYERNORM_DRIVER(float, f32)
LAYERNORM_DRIVER(double, f64)

// ---------------------------------------------------------------------------------------------
// backward: dx per row; dweight, dbias through per-chunk partial rows [dw | db] (2C each)

#define LAYERNORM_BACKWARD_DRIVER(T, SFX)                                                             \
    int qkv_layernorm_backward_##SFX(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, \
                                     const T* mean, const T* rstd, int64_t R, int64_t C, T eps, int simd, \
                                     int n_threads) {                                                 \
        if (R < 0 || C <= 0 || (!mean) != (!rstd)) return QKV_EINVAL;                                 \
        if (R == 0) {                                                                                 \
            if (dweight) memset(dweight, 0, (size_t)C * sizeof(T));                                   \
            if (dbias) memset(dbias, 0, (size_t)C * sizeof(T));                                       \
            return QKV_OK;                                                                            \
        }                                                                                             \
        void (*row)(T*, T*, T*, const T*, const T*, const T*, T, T, int64_t) =                        \
            simd >= QKV_SIMD_AVX512 ? layernorm_backward_row_##SFX##_avx512                           \
            : simd == QKV_SIMD_AVX2 ? layernorm_backward_row_##SFX##_avx2                             \
                                    : layernorm_backward_row_##SFX##_scalar;                          \
        void (*stats)(const T*, int64_t, T, T*, T*) =                                                 \
            simd >= QKV_SIMD_AVX512 ? layernorm_stats_##SFX##_avx512                                  \
            : simd == QKV_SIMD_AVX2 ? layernorm_stats_##SFX##_avx2 : layernorm_stats_##SFX##_scalar;  \
        const int64_t n_chunks = qkv_reduce_chunks(R, 2 * C);                                         \
        T* partial = (T*)malloc((size_t)(n_chunks * 2 * C) * sizeof(T));                              \
        if (!partial) return QKV_ENOMEM;                                                              \
        const int parallel = n_threads > 1 && R * C >= 32768;                                         \
        (void)parallel;                                                                               \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                    \
        for (int64_t k = 0; k < n_chunks; k++) {                                                      \
            T* dw = partial + k * 2 * C;                                                              \
            T* db = dw + C;                                                                           \
            memset(dw, 0, (size_t)(2 * C) * sizeof(T));                                               \
            int64_t r0, r1;                                                                           \
            qkv_chunk_rows(R, n_chunks, k, &r0, &r1);                                                 \
            for (int64_t r = r0; r < r1; r++) {                                                       \
                T m, rs;                                                                              \
                if (mean) {                                                                           \
                    m = mean[r];                                                                      \
                    rs = rstd[r];                                                                     \
                } else {                                                                              \
                    stats(x + r * C, C, eps, &m, &rs);                                                \
                }                                                                                     \
                row(dx + r * C, dw, db, dy + r * C, x + r * C, weight, m, rs, C);                     \
            }                                                                                         \
        }                                                                                             \
        if (dweight) qkv_sum_partials_##SFX(dweight, partial, n_chunks, 2 * C, C, n_threads);         \
        if (dbias) qkv_sum_partials_##SFX(dbias, partial + C, n_chunks, 2 * C, C, n_threads);         \
        free(partial);                                                                                \
        return QKV_OK;                                                                                \
    }

LAYERNORM_BACKWARD_DRIVER(float, f32)
LAYERNORM_BACKWARD_DRIVER(double, f64)
