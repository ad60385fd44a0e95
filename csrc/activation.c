/*
activation.c: out = act(x + bias) over rows, the CPU kernel behind qkv.gelu and the epilogue of
qkv.linear (which runs it in place on the GEMM output while it is still warm in cache).

x and out are (R, N), contiguous, and may be the same buffer; bias is (N,) or NULL.
act: none, GELU tanh approximation, exact (erf) GELU, ReLU. NaN stays NaN (ReLU included).
The math (qkv_math.h) is branch-free so the row loops vectorise; they are compiled for AVX-512,
AVX2 and baseline (activation.inc). The float erf GELU evaluates in double; the double erf GELU
calls libm's erfc and does not vectorise.
*/
#include "qkv_common.h"
#include "qkv_math.h"
#include "activation.h"

#define QKV_INC "activation.inc"
#define T float
#define SFX f32
#define GELU_TANH qkv_gelu_tanh_f
#define GELU_ERF qkv_gelu_erf_f
#include "qkv_isa_instances.h"
#undef T
#undef SFX
#undef GELU_TANH
#undef GELU_ERF

#define T double
#define SFX f64
#define GELU_TANH qkv_gelu_tanh_d
#define GELU_ERF qkv_gelu_erf_d
#include "qkv_isa_instances.h"
#undef T
#undef SFX
#undef GELU_TANH
#undef GELU_ERF

// Rows are split into chunks of about 16K elements so a long single row still uses every thread.
#define BIAS_ACT_DRIVER(T, SFX)                                                                       \
    int qkv_bias_act_##SFX(T* out, const T* x, const T* bias, int64_t R, int64_t N, int act, int simd, \
                           int n_threads) {                                                           \
        if (R < 0 || N <= 0) return QKV_EINVAL;                                                       \
        void (*row)(T*, const T*, const T*, int64_t, int) =                                           \
            simd >= QKV_SIMD_AVX512 ? bias_act_row_##SFX##_avx512                                     \
            : simd == QKV_SIMD_AVX2 ? bias_act_row_##SFX##_avx2 : bias_act_row_##SFX##_scalar;        \
        const int64_t chunk = N < 16384 ? N : 16384;                                                  \
        const int64_t per_row = (N + chunk - 1) / chunk;                                              \
        const int64_t tasks = R * per_row;                                                            \
        const int parallel = n_threads > 1 && R * N >= 16384;                                         \
        (void)parallel;                                                                               \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                    \
        for (int64_t t = 0; t < tasks; t++) {                                                         \
            const int64_t r = t / per_row, j0 = (t % per_row) * chunk;                                \
            const int64_t n = N - j0 < chunk ? N - j0 : chunk;                                        \
            row(out + r * N + j0, x + r * N + j0, bias ? bias + j0 : NULL, n, act);                   \
        }                                                                                             \
        return QKV_OK;                                                                                \
    }

BIAS_ACT_DRIVER(float, f32)
BIAS_ACT_DRIVER(double, f64)
