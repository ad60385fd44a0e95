/*
rope.c: rotary position embeddings, the CPU kernel behind qkv.rope and qkv.rope_backward.

x, out are (B, L, H, D) with any element strides on (B, L, H) and a contiguous last axis (q and k
sliced from a fused projection need no copy; out may be x, for in place). pos (B, L) int64 at
strides ps (ps[0] = 0 when one row of positions serves the batch). inv_freq (D/2,) float64 comes
from qkv._rope.inv_freq, the one place the frequencies (and Llama 3's scaling) are decided.

Hugging Face Llama's rotate-half: for i < D/2 and a = pos * inv_freq[i],
    out[i] = x[i] cos a - x[i + D/2] sin a,   out[i + D/2] = x[i + D/2] cos a + x[i] sin a;
inverse rotates by -a (the backward: a rotation's transpose is its inverse).

Per token the D/2 angles go into a per-thread table of cos | sin in T, then every head of the
token is rotated with it (rope.inc, compiled for AVX-512, AVX2 and baseline); the table costs
D/2 angles per token, amortised over H heads. Threads split the tokens.
- float64: cos and sin from libm of a = pos * inv_freq (as the oracle: the same double angle).
- float32: a branch-free sincos that vectorises (rope.inc): the same double angle, reduced by
  Cody-Waite to [-pi/4, pi/4] (exact for positions up to ~2^31), then degree 11/12 polynomials
  in double: ~1e-13 from the oracle's cos / sin, far under float32's rounding, so the float32
  result stays within ~2 ulp of the oracle. v1 took libm's double sin/cos here too (kept for
  float64): float32 rope of (1, 512, 9, 64) went from 3.9 ms to 0.41 ms with this (2-core machine
  under load, same run).
*/
#include <math.h>
#include <stdlib.h>
#include "qkv_common.h"
#include "rope.h"

#define QKV_INC "rope.inc"
#define T float
#define SFX f32
#define ROPE_POLY_SINCOS 1
#include "qkv_isa_instances.h"
#undef T
#undef SFX
#undef ROPE_POLY_SINCOS

#define T double
#define SFX f64
#define ROPE_POLY_SINCOS 0
#include "qkv_isa_instances.h"
#undef T
#undef SFX
#undef ROPE_POLY_SINCOS

#define ROPE_DRIVER(T, SFX)                                                                           \
    int qkv_rope_##SFX(T* out, const T* x, const int64_t* pos, const double* inv_freq, int64_t B, int64_t L, \
                       int64_t H, int64_t D, const int64_t* xs, const int64_t* os, const int64_t* ps, int inverse, \
                       int simd, int n_threads) {                                                     \
        if (B < 0 || L < 0 || H < 0 || D <= 0 || D % 2) return QKV_EINVAL;                            \
        void (*row)(T*, const T*, const T*, const T*, int64_t) =                                      \
            simd >= QKV_SIMD_AVX512 ? rope_row_##SFX##_avx512                                         \
            : simd == QKV_SIMD_AVX2 ? rope_row_##SFX##_avx2 : rope_row_##SFX##_scalar;                \
        void (*angles)(T*, T*, double, const double*, int64_t, int) =                                 \
            simd >= QKV_SIMD_AVX512 ? rope_angles_##SFX##_avx512                                      \
            : simd == QKV_SIMD_AVX2 ? rope_angles_##SFX##_avx2 : rope_angles_##SFX##_scalar;          \
        const int64_t h2 = D / 2, n_tok = B * L;                                                      \
        const int parallel = n_threads > 1 && n_tok * H * D >= 32768;                                 \
        int status = QKV_OK;                                                                          \
        (void)parallel;                                                                               \
        QKV_OMP(parallel num_threads(n_threads) if(parallel))                                         \
        {                                                                                             \
            T* cs = (T*)malloc((size_t)D * sizeof(T)); /* cos (D/2) | sin (D/2) of this token */      \
            if (!cs) {                                                                                \
                QKV_OMP(atomic write)                                                                 \
                status = QKV_ENOMEM;                                                                  \
            }                                                                                         \
            QKV_OMP(for schedule(static))                                                             \
            for (int64_t t = 0; t < n_tok; t++) {                                                     \
                if (!cs) continue;                                                                    \
                const int64_t b = t / L, l = t % L;                                                   \
                angles(cs, cs + h2, (double)pos[b * ps[0] + l * ps[1]], inv_freq, h2, inverse);        \
                const T* xt = x + b * xs[0] + l * xs[1];                                              \
                T* ot = out + b * os[0] + l * os[1];                                                  \
                for (int64_t h = 0; h < H; h++) row(ot + h * os[2], xt + h * xs[2], cs, cs + h2, h2); \
            }                                                                                         \
            free(cs);                                                                                 \
        }                                                                                             \
        return status;                                                                                \
    }

ROPE_DRIVER(float, f32)
ROPE_DRIVER(double, f64)
