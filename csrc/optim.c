/*
optim.c: AdamW (Loshchilov & Hutter: Adam with decoupled weight decay), the CPU kernel behind
qkv.optim.AdamW. One pass over a parameter updates it and both moments, element by element, in
the order PyTorch's torch.optim.AdamW (single-tensor path) writes it:

    p = p * (1 - lr * wd)                       decoupled weight decay (decay = 1 when none)
    m = m + (1 - beta1) * (g - m)               first moment (torch's lerp)
    v = beta2 * v + (1 - beta2) * g * g         second moment
    p = p - step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps),  step_size = lr / (1 - beta1^t)

The bias corrections are scalars of the step, computed once by the caller in double. Each element
is independent: OpenMP splits the range in static chunks and the result has the same bits for any
thread count. The loop is compiled for AVX-512, AVX2 and the baseline (sqrt and divide vectorise).

Also here: the sum of squares of a gradient in double (qkv.optim.clip_grad_norm's global norm),
without a float64 copy of it. The range is cut into 64 chunks that depend on n only, each summed
in order into its own partial, the partials added in chunk order: the same bits for any thread
count.
*/
#include <math.h>
#include "qkv_common.h"
#include "optim.h"

#define ADAMW_LOOP(T, SQRT, NAME)                                                                       \
    static void NAME(T* restrict p, const T* restrict g, T* restrict m, T* restrict v, int64_t n,     \
                     T b1, T b2, T eps, T step_size, T bc2_sqrt, T decay, int n_threads) {            \
        const T one_b1 = (T)1 - b1, one_b2 = (T)1 - b2;                                               \
        (void)n_threads;                                                                              \
        QKV_OMP(parallel for simd schedule(static) num_threads(n_threads) if (n_threads > 1 && n >= 65536)) \
        for (int64_t i = 0; i < n; i++) {                                                             \
            T gi = g[i];                                                                              \
            T mi = m[i] + one_b1 * (gi - m[i]);                                                       \
            T vi = b2 * v[i] + one_b2 * gi * gi;                                                      \
            T pi = p[i] * decay;                                                                      \
            m[i] = mi;                                                                                \
            v[i] = vi;                                                                                \
            p[i] = pi - step_size * (mi / (SQRT(vi) / bc2_sqrt + eps));                              \
        }                                                                                             \
    }

QKV_BEGIN_AVX512
ADAMW_LOOP(float, sqrtf, adamw_f32_avx512)
ADAMW_LOOP(double, sqrt, adamw_f64_avx512)
QKV_END_TARGET

QKV_BEGIN_AVX2
ADAMW_LOOP(float, sqrtf, adamw_f32_avx2)
ADAMW_LOOP(double, sqrt, adamw_f64_avx2)
QKV_END_TARGET

ADAMW_LOOP(float, sqrtf, adamw_f32_scalar)
ADAMW_LOOP(double, sqrt, adamw_f64_scalar)

#define ADAMW_DRIVER(T, SFX)                                                                          \
    int qkv_adamw_##SFX(T* p, const T* g, T* m, T* v, int64_t n, double beta1, double beta2, double eps, \
                        double step_size, double bc2_sqrt, double decay, int simd, int n_threads) {   \
        if (n < 0 || !(bc2_sqrt > 0)) return QKV_EINVAL;                                              \
        void (*loop)(T*, const T*, T*, T*, int64_t, T, T, T, T, T, T, int) =                          \
            simd >= QKV_SIMD_AVX512 ? adamw_##SFX##_avx512                                            \
            : simd == QKV_SIMD_AVX2 ? adamw_##SFX##_avx2                                              \
                                    : adamw_##SFX##_scalar;                                           \
        loop(p, g, m, v, n, (T)beta1, (T)beta2, (T)eps, (T)step_size, (T)bc2_sqrt, (T)decay,          \
             n_threads < 1 ? 1 : n_threads);                                                          \
        return QKV_OK;                                                                                \
    }

ADAMW_DRIVER(float, f32)
ADAMW_DRIVER(double, f64)

#define SUMSQ_CHUNKS 64
#define SUMSQ_DRIVER(T, SFX)                                                                          \
    double qkv_sumsq_##SFX(const T* x, int64_t n, int n_threads) {                                    \
        double part[SUMSQ_CHUNKS];                                                                    \
        const int64_t per = (n + SUMSQ_CHUNKS - 1) / SUMSQ_CHUNKS;                                    \
        (void)n_threads;                                                                              \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if (n_threads > 1 && n >= 65536)) \
        for (int c = 0; c < SUMSQ_CHUNKS; c++) {                                                      \
            const int64_t i0 = c * per < n ? c * per : n, i1 = (c + 1) * per < n ? (c + 1) * per : n; \
            double s = 0;                                                                             \
            QKV_SIMD_LOOP(reduction(+:s))                                                             \
            for (int64_t i = i0; i < i1; i++) s += (double)x[i] * (double)x[i];                       \
            part[c] = s;                                                                              \
        }                                                                                             \
        double total = 0;                                                                             \
        for (int c = 0; c < SUMSQ_CHUNKS; c++) total += part[c];                                      \
        return total;                                                                                 \
    }

SUMSQ_DRIVER(float, f32)
SUMSQ_DRIVER(double, f64)
