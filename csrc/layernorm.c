/*
layernorm.c: layer norm over the last axis, the CPU kernel behind qkv.layer_norm.

x and out are (R, C), contiguous; weight and bias are (C,) or NULL.
out = (x - mean) / sqrt(var + eps) * weight + bias, with the biased variance (as PyTorch and
GPT-2/BERT use). Two-pass statistics in the input dtype with vectorised (so pairwise-ish, 8-16
partial sums) reductions; error ~ sqrt(C) ulp. Row loops compiled for AVX-512, AVX2 and baseline
(layernorm.inc), threads split the rows.
*/
#include <math.h>
#include "qkv_common.h"
#include "layernorm.h"

#define QKV_INC "layernorm.inc"
#define T float
#define SFX f32
#define SQRT sqrtf
#include "qkv_isa_instances.h"
#undef T
#undef SFX
#undef SQRT

#define T double
#define SFX f64
#define SQRT sqrt
#include "qkv_isa_instances.h"
#undef T
#undef SFX
#undef SQRT

#define LAYERNORM_DRIVER(T, SFX)                                                                      \
    int qkv_layernorm_##SFX(T* out, const T* x, const T* weight, const T* bias, int64_t R, int64_t C, \
                            T eps, int simd, int n_threads) {                                         \
        if (R < 0 || C <= 0) return QKV_EINVAL;                                                       \
        void (*row)(T*, const T*, const T*, const T*, int64_t, T) =                                   \
            simd >= QKV_SIMD_AVX512 ? layernorm_row_##SFX##_avx512                                    \
            : simd == QKV_SIMD_AVX2 ? layernorm_row_##SFX##_avx2 : layernorm_row_##SFX##_scalar;      \
        const int parallel = n_threads > 1 && R * C >= 32768;                                         \
        (void)parallel;                                                                               \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                    \
        for (int64_t r = 0; r < R; r++) row(out + r * C, x + r * C, weight, bias, C, eps);            \
        return QKV_OK;                                                                                \
    }

LAYERNORM_DRIVER(float, f32)
LAYERNORM_DRIVER(double, f64)
