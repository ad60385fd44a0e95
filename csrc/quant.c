/*
quant.c: y = x @ W with W in low precision, the CPU kernels behind qkv.linear with a
qkv.QuantizedWeight (src/qkv/quant.py). Two formats, both stored as rows of W's columns (the
(out, in) layout of nn.Linear, so a row is one output's K inputs, contiguous):

- bf16: the top 16 bits of the float32 (round to nearest even); converting back is a shift.
- int8: llama.cpp's Q8_0: blocks of 32 int8 values q along K with one float16 scale d per block,
  W[k, n] = d * q (34 bytes per 32 weights, 27% of float32). Rows are zero padded to Kp, a
  multiple of 32; the scales are (N, Kp / 32) float16 bit patterns.

Decode (a few rows of x) is bound by reading W once: qkv_qlinear_* stream the weights, 4 output
columns at a time per thread, with the threads splitting the output columns into contiguous ranges
(schedule(static)); each output is one column's dot product in a fixed order, so any thread count
gives the same bits. The 4 rows of a group are one contiguous region, so the software prefetch
fetches the next group's region linearly at the rate the current one is read (one group ahead:
6 KiB for bf16 at K = 768). The rows of x reuse the 4 weight rows from L1. bf16 avoids shuffles
by de-interleaving x instead (quant.inc).

Measured and not adopted (one thread of a 2-core AVX2 Zen 3, against an AVX2 read loop over 256 MiB
in the same rounds; bf16 at 70-75% of it, int8 at 75-85%, on a loaded machine): no software
prefetch, prefetching two groups ahead, the NTA/T1 hints, one column at a time as a single stream
prefetched 1-4 KiB ahead, and 2 or 8 columns a pass were all within the noise of this kernel or
slower; weights on 2 MiB pages made no visible difference in decode. int8 from cache is bound by
vcvtdq2ps (one a cycle on Zen 3: about 22 GB/s from L1, 16 GB/s from L2/L3 per core); the
1.5 * 2^23 magic-number conversion (add, subtract) instead is slower (more operations), and a
float32 copy of a chunk's scales or a single FMA chain per block made no difference.

Batches and prefill (many rows) are bound by arithmetic: the caller (_quant.pyx) converts a panel of
W's columns to float32 with qkv_dequant_* (it stays in cache) and multiplies with sgemm.

Exactness: a dequantised weight is exactly a float32 (bf16 is one; int8 times a float16 scale has
at most 19 significant bits), so both paths differ from the float64 product with the dequantised
weights only by float32 rounding of the sums.

SIMD: the loops are compiled per ISA (quant.inc via qkv_isa_instances.h): AVX2 + FMA + F16C
intrinsics, and plain C for the scalar level. The AVX-512 level runs the AVX2 code compiled for
AVX-512 (no 512-bit, AVX512-BF16 or VNNI dot products yet).
*/
#include <stdlib.h>
#include <immintrin.h>
#include "qkv_common.h"
#include "quant.h"

// bfloat16 / float16 bit patterns -> float, exactly (no F16C needed: the scalar level uses these)
static inline float qk_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

static inline float qk_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    union { uint32_t u; float f; } v;
    if (e == 0x1f) {
        v.u = sign | 0x7f800000u | (m << 13);  // inf, nan
    } else if (e) {
        v.u = sign | ((e + 112) << 23) | (m << 13);  // normal: rebias 15 -> 127
    } else {
        v.f = (float)m * 5.9604644775390625e-08f;  // subnormal: m * 2^-24, exact
        v.u |= sign;
    }
    return v.f;
}

#define QKV_INC "quant.inc"
#include "qkv_isa_instances.h"

typedef void (*bf16_cols_fn)(float*, int64_t, const float*, const float*, const uint16_t*, int64_t, int64_t,
                             int64_t, int64_t);
typedef void (*q8_cols_fn)(float*, int64_t, const float*, const int8_t*, const uint16_t*, int64_t, int64_t,
                           int64_t, int64_t);

// Columns are handed out in groups of 4 (the kernels' width); threads only for enough weights.
#define QK_GROUP 4
#define QK_PARALLEL_MIN (1 << 16)

int qkv_qlinear_bf16(float* y, const float* x, const uint16_t* w, int64_t M, int64_t K, int64_t N, int simd,
                     int n_threads) {
    if (M < 0 || K <= 0 || N <= 0) return QKV_EINVAL;
    if (M == 0) return QKV_OK;
    bf16_cols_fn cols = simd >= QKV_SIMD_AVX512 ? qk_bf16_cols_avx512
                        : simd == QKV_SIMD_AVX2 ? qk_bf16_cols_avx2 : qk_bf16_cols_scalar;
    // xp (M, K16): each group of 16 features of x as its 8 evens then its 8 odds (quant.inc)
    const int64_t K16 = K & ~(int64_t)15;
    float* xp = NULL;
    if (simd >= QKV_SIMD_AVX2 && K16) {
        xp = (float*)malloc((size_t)(M * K16) * sizeof(float));
        if (!xp) return QKV_ENOMEM;
        for (int64_t m = 0; m < M; m++)
            for (int64_t k = 0; k < K16; k += 16)
                for (int i = 0; i < 8; i++) {
                    xp[m * K16 + k + i] = x[m * K + k + 2 * i];
                    xp[m * K16 + k + 8 + i] = x[m * K + k + 2 * i + 1];
                }
    }
    const int64_t groups = (N + QK_GROUP - 1) / QK_GROUP;
    const int parallel = n_threads > 1 && K * N >= QK_PARALLEL_MIN;
    (void)parallel;
    QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))
    for (int64_t g = 0; g < groups; g++) {
        const int64_t n0 = g * QK_GROUP, n1 = n0 + QK_GROUP < N ? n0 + QK_GROUP : N;
        cols(y, N, x, xp, w, M, K, n0, n1);
    }
    free(xp);
    return QKV_OK;
}

int qkv_qlinear_q8(float* y, const float* x, const int8_t* q, const uint16_t* s, int64_t M, int64_t K, int64_t N,
                   int simd, int n_threads) {
    if (M < 0 || K <= 0 || N <= 0) return QKV_EINVAL;
    if (M == 0) return QKV_OK;
    q8_cols_fn cols = simd >= QKV_SIMD_AVX512 ? qk_q8_cols_avx512
                      : simd == QKV_SIMD_AVX2 ? qk_q8_cols_avx2 : qk_q8_cols_scalar;
    const int64_t groups = (N + QK_GROUP - 1) / QK_GROUP;
    const int parallel = n_threads > 1 && K * N >= QK_PARALLEL_MIN;
    (void)parallel;
    QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))
    for (int64_t g = 0; g < groups; g++) {
        const int64_t n0 = g * QK_GROUP, n1 = n0 + QK_GROUP < N ? n0 + QK_GROUP : N;
        cols(y, N, x, q, s, M, K, n0, n1);
    }
    return QKV_OK;
}

// Dequantisation: rows in chunks of 16 over the threads (the panel is small: a few hundred rows)
int qkv_dequant_bf16(float* out, const uint16_t* w, int64_t R, int64_t K, int simd, int n_threads) {
    if (R < 0 || K <= 0) return QKV_EINVAL;
    void (*deq)(float*, const uint16_t*, int64_t, int64_t) =
        simd >= QKV_SIMD_AVX512 ? qk_bf16_dequant_avx512
        : simd == QKV_SIMD_AVX2 ? qk_bf16_dequant_avx2 : qk_bf16_dequant_scalar;
    const int64_t chunks = (R + 15) / 16;
    const int parallel = n_threads > 1 && R * K >= QK_PARALLEL_MIN;
    (void)parallel;
    QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t r0 = c * 16, r1 = r0 + 16 < R ? r0 + 16 : R;
        deq(out + r0 * K, w + r0 * K, r1 - r0, K);
    }
    return QKV_OK;
}

int qkv_dequant_q8(float* out, const int8_t* q, const uint16_t* s, int64_t R, int64_t K, int simd, int n_threads) {
    if (R < 0 || K <= 0) return QKV_EINVAL;
    void (*deq)(float*, const int8_t*, const uint16_t*, int64_t, int64_t) =
        simd >= QKV_SIMD_AVX512 ? qk_q8_dequant_avx512
        : simd == QKV_SIMD_AVX2 ? qk_q8_dequant_avx2 : qk_q8_dequant_scalar;
    const int64_t KB = (K + QKV_Q8_BLOCK - 1) / QKV_Q8_BLOCK;
    const int64_t chunks = (R + 15) / 16;
    const int parallel = n_threads > 1 && R * K >= QK_PARALLEL_MIN;
    (void)parallel;
    QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t r0 = c * 16, r1 = r0 + 16 < R ? r0 + 16 : R;
        deq(out + r0 * K, q + r0 * KB * QKV_Q8_BLOCK, s + r0 * KB, r1 - r0, K);
    }
    return QKV_OK;
}
