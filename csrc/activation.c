/*
activation.c: out = act(x + bias) over rows, the CPU kernel behind qkv.gelu and the epilogue of
qkv.linear (which runs it in place on the GEMM output while it is still warm in cache).

x and out are (R, N), contiguous, and may be the same buffer; bias is (N,) or NULL.
act: none, GELU tanh approximation, exact (erf) GELU, ReLU. NaN stays NaN (ReLU included).
The math (qkv_math.h) is branch-free so the row loops vectorise; they are compiled for AVX-512,
AVX2 and baseline (activation.inc). The float erf GELU evaluates in double; the double erf GELU
calls libm's erfc and does not vectorise.

SwiGLU (qkv.swiglu and the epilogue of qkv.linear(..., activation="swiglu")): out = silu(gate) * up,
silu(g) = g / (1 + e^-g), with gate and up rows at their own strides (the two halves of the
linear's [gate | up] GEMM block); backward dgate = dy up silu'(g), dup = dy silu(g), silu'(g) =
s (1 + g (1 - s)), s = 1/(1 + e), 1 - s = 1/(1 + 1/e), e = e^-g (no cancellation), g clipped to
+-1e4 in the second term, where s (1 - s) is exactly 0, so inf * 0 never makes a NaN.

Backward (qkv.gelu_backward, and the first pass of qkv.linear_backward): dx = dy * act'(x), and on
request dbias = column sums of dx in the same pass, through fixed row chunks and a fixed-order sum
of their partial rows (qkv_reduce.h): the same bits for any thread count.
*/
#include <stdlib.h>
#include "qkv_common.h"
#include "qkv_math.h"
#include "qkv_reduce.h"
#include "activation.h"

#define QKV_INC "activation.inc"
#define T float
#define SFX f32
#define GELU_TANH qkv_gelu_tanh_f
#define GELU_ERF qkv_gelu_erf_f
#define GELU_TANH_GRAD qkv_gelu_tanh_grad_f
#define GELU_ERF_GRAD qkv_gelu_erf_grad_f
#define EXP qkv_expf
#include "qkv_isa_instances.h"
#undef T
#undef SFX
#undef GELU_TANH
#undef GELU_ERF
#undef GELU_TANH_GRAD
#undef GELU_ERF_GRAD
#undef EXP

#define T double
#define SFX f64
#define GELU_TANH qkv_gelu_tanh_d
#define GELU_ERF qkv_gelu_erf_d
#define GELU_TANH_GRAD qkv_gelu_tanh_grad_d
#define GELU_ERF_GRAD qkv_gelu_erf_grad_d
#define EXP qkv_exp
#include "qkv_isa_instances.h"
#undef T
#undef SFX
#undef GELU_TANH
#undef GELU_ERF
#undef GELU_TANH_GRAD
#undef GELU_ERF_GRAD
#undef EXP

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

// ---------------------------------------------------------------------------------------------
// backward: dx = dy * act'(x); dbias (N,) or NULL = column sums of dx. dx may be NULL (only
// dbias), x may be NULL for act none. Without dbias, elementwise tasks as in the forward; with
// it, fixed row chunks each own a partial row, summed in chunk order.

#define ACT_BACKWARD_DRIVER(T, SFX)                                                                   \
    int qkv_act_backward_##SFX(T* dx, T* dbias, const T* dy, const T* x, int64_t R, int64_t N, int act, \
                               int simd, int n_threads) {                                             \
        if (R < 0 || N <= 0 || (!dx && !dbias) || (!x && act != QKV_ACT_NONE)) return QKV_EINVAL;     \
        void (*row)(T*, T*, const T*, const T*, int64_t, int) =                                       \
            simd >= QKV_SIMD_AVX512 ? act_backward_row_##SFX##_avx512                                 \
            : simd == QKV_SIMD_AVX2 ? act_backward_row_##SFX##_avx2 : act_backward_row_##SFX##_scalar; \
        const int parallel = n_threads > 1 && R * N >= 16384;                                         \
        (void)parallel;                                                                               \
        if (!dbias) {                                                                                 \
            const int64_t chunk = N < 16384 ? N : 16384;                                              \
            const int64_t per_row = (N + chunk - 1) / chunk;                                          \
            const int64_t tasks = R * per_row;                                                        \
            QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                \
            for (int64_t t = 0; t < tasks; t++) {                                                     \
                const int64_t r = t / per_row, j0 = (t % per_row) * chunk;                            \
                const int64_t n = N - j0 < chunk ? N - j0 : chunk;                                    \
                row(dx + r * N + j0, NULL, dy + r * N + j0, x ? x + r * N + j0 : NULL, n, act);       \
            }                                                                                         \
            return QKV_OK;                                                                            \
        }                                                                                             \
        if (R == 0) {                                                                                 \
            memset(dbias, 0, (size_t)N * sizeof(T));                                                  \
            return QKV_OK;                                                                            \
        }                                                                                             \
        const int64_t n_chunks = qkv_reduce_chunks(R, N);                                             \
        T* partial = (T*)malloc((size_t)(n_chunks * N) * sizeof(T));                                  \
        if (!partial) return QKV_ENOMEM;                                                              \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                    \
        for (int64_t k = 0; k < n_chunks; k++) {                                                      \
            T* db = partial + k * N;                                                                  \
            memset(db, 0, (size_t)N * sizeof(T));                                                     \
            int64_t r0, r1;                                                                           \
            qkv_chunk_rows(R, n_chunks, k, &r0, &r1);                                                 \
            for (int64_t r = r0; r < r1; r++)                                                         \
                row(dx ? dx + r * N : NULL, db, dy + r * N, x ? x + r * N : NULL, N, act);            \
        }                                                                                             \
        qkv_sum_partials_##SFX(dbias, partial, n_chunks, N, N, n_threads);                            \
        free(partial);                                                                                \
        return QKV_OK;                                                                                \
    }

ACT_BACKWARD_DRIVER(float, f32)
ACT_BACKWARD_DRIVER(double, f64)

// ---------------------------------------------------------------------------------------------
// SwiGLU: out (R, N) contiguous = silu(gate) * up, gate / up rows ldg / ldu elements apart

#define SWIGLU_DRIVER(T, SFX)                                                                         \
    int qkv_swiglu_##SFX(T* out, const T* gate, const T* up, int64_t R, int64_t N, int64_t ldg, int64_t ldu, \
                         int simd, int n_threads) {                                                   \
        if (R < 0 || N <= 0 || ldg < N || ldu < N) return QKV_EINVAL;                                 \
        void (*row)(T*, const T*, const T*, int64_t) =                                                \
            simd >= QKV_SIMD_AVX512 ? swiglu_row_##SFX##_avx512                                       \
            : simd == QKV_SIMD_AVX2 ? swiglu_row_##SFX##_avx2 : swiglu_row_##SFX##_scalar;            \
        const int parallel = n_threads > 1 && R * N >= 16384;                                         \
        (void)parallel;                                                                               \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                    \
        for (int64_t r = 0; r < R; r++) row(out + r * N, gate + r * ldg, up + r * ldu, N);            \
        return QKV_OK;                                                                                \
    }                                                                                                 \
    int qkv_swiglu_backward_##SFX(T* dgate, T* dup, const T* dy, const T* gate, const T* up, int64_t R, \
                                  int64_t N, int simd, int n_threads) {                               \
        if (R < 0 || N <= 0) return QKV_EINVAL;                                                       \
        void (*row)(T*, T*, const T*, const T*, const T*, int64_t) =                                  \
            simd >= QKV_SIMD_AVX512 ? swiglu_backward_row_##SFX##_avx512                              \
            : simd == QKV_SIMD_AVX2 ? swiglu_backward_row_##SFX##_avx2                                \
                                    : swiglu_backward_row_##SFX##_scalar;                             \
        const int parallel = n_threads > 1 && R * N >= 16384;                                         \
        (void)parallel;                                                                               \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                    \
        for (int64_t r = 0; r < R; r++)                                                               \
            row(dgate + r * N, dup + r * N, dy + r * N, gate + r * N, up + r * N, N);                 \
        return QKV_OK;                                                                                \
    }

SWIGLU_DRIVER(float, f32)
SWIGLU_DRIVER(double, f64)
