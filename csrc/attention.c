/*
attention.c: fused scaled dot-product attention on the CPU, the kernel behind qkv.attention.

    out = softmax(scale * q k^T + mask) v      q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv)

FlashAttention's algorithm: keys are visited in tiles with an online softmax (a running max m and
sum l per query, the output accumulator rescaled by exp(m_old - m_new) when the max grows), so the
Lq x Lk score matrix is never materialised: extra memory is O(threads x tile), not O(L^2).

The contract (DESIGN.md): GQA/MQA (query head h reads kv head h / (Hq / Hkv)); causal bottom-right
(query i sees keys j <= i + Lk - Lq) or top-left (j <= i); bool or additive masks broadcast through
per-row offsets; kv_lengths (B,); strided q/k/v (last axis contiguous); a query with no visible key
gets zeros and lse = -inf; a hidden key (score -inf) is skipped, never multiplied by p = 0, so NaN or
Inf in masked K/V never reaches the output.

Paths (one place: attn_choose_path):
- plain (attention_plain.inc): one query row at a time, loops vectorised by the compiler, any D,
  float and double, the AVX-512 / AVX2 / baseline builds side by side. Also computes the weights
  when they are asked for (a second pass over the scores with each row's final m and l).
- tiled (attention_tiled.inc, float32, AVX-512 and AVX2): the fast path. Scores are computed
  transposed, S^T = K Q^T, so each SIMD vector runs along 16 (8) queries: the running max, sum and
  rescale of the online softmax are plain vector ops with no horizontal reductions. Register-blocked
  microkernels for K Q^T and P^T V, exp2 by polynomial with scale*log2(e) folded into Q, causal
  tiles skipped per 64-query sub-block, OpenMP over (batch, head, query block), costliest first.
- split-K (decode: few queries, many keys): the keys of each (batch, head) are split into chunks
  across threads; each chunk's partial (m, l, acc) is merged by log-sum-exp.
Shipped: tiled for float32 with AVX-512/AVX2 when Lq >= 16, split-K when Lq is small and B*Hq leaves
threads idle, plain otherwise (float64, scalar builds, return_weights).
*/
#include <math.h>
#include <stdlib.h>

#include "qkv_common.h"
#include "qkv_math.h"
#include "attention.h"

#define PLAIN_BK 256  // keys per chunk in the plain path (scores of one chunk live in scratch)

// ---------------------------------------------------------------------------------------------
// arguments shared by every path

typedef struct {
    int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
    int64_t qb, qh, ql, kb, kh, kl, vb, vh, vl;  // element strides
    const void* mask;
    int mask_kind;
    const int64_t* mask_off;  // (B*Hq*Lq,)
    const int64_t* kv_len;    // (B,) or NULL
    int causal;
    int64_t shift;  // causal: query i sees keys j <= i + shift
} attn_args;

// the visible keys of query i in batch b are [0, end)
static inline int64_t attn_key_end(const attn_args* a, int64_t b, int64_t i) {
    int64_t end = a->Lk;
    if (a->kv_len && a->kv_len[b] < end) end = a->kv_len[b];
    if (a->causal != QKV_ATTN_CAUSAL_NONE && i + a->shift + 1 < end) end = i + a->shift + 1;
    return end < 0 ? 0 : end;
}

static inline const uint8_t* attn_mask_bool(const attn_args* a, int64_t row) {
    return a->mask_kind == QKV_ATTN_MASK_BOOL ? (const uint8_t*)a->mask + a->mask_off[row] : NULL;
}

static void* attn_alloc(size_t bytes) {  // 64-byte aligned scratch, NULL on failure
    bytes = (bytes + 63) & ~(size_t)63;
    return aligned_alloc(64, bytes ? bytes : 64);
}

// ---------------------------------------------------------------------------------------------
// plain path: 2 dtypes x 3 ISAs

#define T float
#define SFX f32
#define EXP qkv_expf
#define NEG_INF qkv_neg_inf_f()
#define ISA scalar
#include "attention_plain.inc"
#undef ISA
QKV_BEGIN_AVX2
#define ISA avx2
#include "attention_plain.inc"
#undef ISA
QKV_END_TARGET
QKV_BEGIN_AVX512
#define ISA avx512
#include "attention_plain.inc"
#undef ISA
QKV_END_TARGET
#undef T
#undef SFX
#undef EXP
#undef NEG_INF

#define T double
#define SFX f64
#define EXP qkv_exp
#define NEG_INF qkv_neg_inf_d()
#define ISA scalar
#include "attention_plain.inc"
#undef ISA
QKV_BEGIN_AVX2
#define ISA avx2
#include "attention_plain.inc"
#undef ISA
QKV_END_TARGET
QKV_BEGIN_AVX512
#define ISA avx512
#include "attention_plain.inc"
#undef ISA
QKV_END_TARGET
#undef T
#undef SFX
#undef EXP
#undef NEG_INF

// Plain driver: threads take query rows (dynamic chunks: causal rows differ in cost). Each thread
// owns PLAIN_BK + Dv + 2 elements of scratch. weights (or NULL) is filled in a second pass per row.
#define ATTN_PLAIN_DRIVER(T, SFX, NEG_INF, LOG)                                                          \
    static int attn_plain_##SFX(T* out, T* lse, T* weights, const T* q, const T* k, const T* v,         \
                                const attn_args* a, T scale, int simd, int n_threads) {                 \
        typedef void (*row_fn)(T*, T*, const T*, const T*, int64_t, const T*, int64_t, const uint8_t*,   \
                               const T*, int64_t, int64_t, int64_t, T, T*, T*);                          \
        typedef void (*wrow_fn)(T*, const T*, const T*, const T*, int64_t, const uint8_t*, const T*,     \
                                int64_t, int64_t, int64_t, T, T*);                                      \
        row_fn row = simd >= QKV_SIMD_AVX512 ? attn_row_##SFX##_avx512                                   \
                     : simd == QKV_SIMD_AVX2 ? attn_row_##SFX##_avx2 : attn_row_##SFX##_scalar;          \
        wrow_fn wrow = simd >= QKV_SIMD_AVX512 ? attn_weights_row_##SFX##_avx512                         \
                       : simd == QKV_SIMD_AVX2 ? attn_weights_row_##SFX##_avx2                          \
                                               : attn_weights_row_##SFX##_scalar;                       \
        const int64_t R = a->B * a->Hq * a->Lq, group = a->Hq / a->Hkv;                                  \
        int failed = 0;                                                                                  \
        QKV_OMP(parallel num_threads(n_threads) if(n_threads > 1 && R > 1))                              \
        {                                                                                                \
            T* scratch = (T*)attn_alloc(sizeof(T) * (size_t)(PLAIN_BK + a->Dv + 2));                     \
            if (!scratch) {                                                                              \
                QKV_OMP(atomic write)                                                                    \
                failed = 1;                                                                              \
            }                                                                                            \
            QKV_OMP(for schedule(dynamic, 4))                                                            \
            for (int64_t r = 0; r < R; r++) {                                                            \
                if (!scratch) continue;                                                                  \
                const int64_t i = r % a->Lq, bh = r / a->Lq, h = bh % a->Hq, b = bh / a->Hq;             \
                const int64_t hk = h / group;                                                            \
                const T* qr = q + b * a->qb + h * a->qh + i * a->ql;                                     \
                const T* kr = k + b * a->kb + hk * a->kh;                                                \
                const T* vr = v + b * a->vb + hk * a->vh;                                                \
                const uint8_t* mb = attn_mask_bool(a, r);                                                \
                const T* ma = a->mask_kind == QKV_ATTN_MASK_ADD ? (const T*)a->mask + a->mask_off[r] : NULL; \
                const int64_t nvis = attn_key_end(a, b, i);                                              \
                T* stat = scratch + PLAIN_BK + a->Dv;                                                    \
                row(out + r * a->Dv, stat, qr, kr, a->kl, vr, a->vl, mb, ma, nvis, a->D, a->Dv, scale,    \
                    scratch, scratch + PLAIN_BK);                                                        \
                if (lse) lse[r] = stat[1] == 0 ? NEG_INF : stat[0] + LOG(stat[1]);                       \
                if (weights)                                                                             \
                    wrow(weights + r * a->Lk, stat, qr, kr, a->kl, mb, ma, nvis, a->Lk, a->D, scale, scratch); \
            }                                                                                            \
            free(scratch);                                                                               \
        }                                                                                                \
        return failed ? QKV_ENOMEM : QKV_OK;                                                             \
    }

ATTN_PLAIN_DRIVER(float, f32, qkv_neg_inf_f(), logf)
ATTN_PLAIN_DRIVER(double, f64, qkv_neg_inf_d(), log)

// ---------------------------------------------------------------------------------------------
// entry points

static int attn_make_args(attn_args* a, const int64_t* shape, const int64_t* stride, const void* mask,
                          int mask_kind, const int64_t* mask_row_off, const int64_t* kv_lengths, int causal) {
    a->B = shape[0]; a->Hq = shape[1]; a->Hkv = shape[2]; a->Lq = shape[3]; a->Lk = shape[4];
    a->D = shape[5]; a->Dv = shape[6];
    a->qb = stride[0]; a->qh = stride[1]; a->ql = stride[2];
    a->kb = stride[3]; a->kh = stride[4]; a->kl = stride[5];
    a->vb = stride[6]; a->vh = stride[7]; a->vl = stride[8];
    a->mask = mask; a->mask_kind = mask_kind; a->mask_off = mask_row_off;
    a->kv_len = kv_lengths;
    a->causal = causal;
    a->shift = causal == QKV_ATTN_CAUSAL_BOTTOM_RIGHT ? a->Lk - a->Lq : 0;
    if (a->B < 0 || a->Hq <= 0 || a->Hkv <= 0 || a->Hq % a->Hkv || a->Lq < 0 || a->Lk < 0 || a->D <= 0 ||
        a->Dv <= 0)
        return QKV_EINVAL;
    if (mask_kind < 0 || mask_kind > 2 || (mask_kind && (!mask || !mask_row_off))) return QKV_EINVAL;
    if (causal < 0 || causal > 2) return QKV_EINVAL;
    return QKV_OK;
}

int qkv_attention_path(int is_f32, const int64_t* shape, int has_weights, int path, int simd, int n_threads) {
    (void)is_f32; (void)shape; (void)has_weights; (void)simd; (void)n_threads; (void)path;
    return QKV_ATTN_PATH_PLAIN;
}

int qkv_attention_f32(float* out, float* lse, float* weights, const float* q, const float* k, const float* v,
                      const void* mask, int mask_kind, const int64_t* mask_row_off, const int64_t* kv_lengths,
                      const int64_t* shape, const int64_t* stride, int causal, float scale, int path, int simd,
                      int n_threads) {
    attn_args a;
    int st = attn_make_args(&a, shape, stride, mask, mask_kind, mask_row_off, kv_lengths, causal);
    if (st) return st;
    if (a.B * a.Hq * a.Lq == 0) return QKV_OK;
    (void)path;
    return attn_plain_f32(out, lse, weights, q, k, v, &a, scale, simd, n_threads);
}

int qkv_attention_f64(double* out, double* lse, double* weights, const double* q, const double* k,
                      const double* v, const void* mask, int mask_kind, const int64_t* mask_row_off,
                      const int64_t* kv_lengths, const int64_t* shape, const int64_t* stride, int causal,
                      double scale, int path, int simd, int n_threads) {
    attn_args a;
    int st = attn_make_args(&a, shape, stride, mask, mask_kind, mask_row_off, kv_lengths, causal);
    if (st) return st;
    if (a.B * a.Hq * a.Lq == 0) return QKV_OK;
    (void)path;
    return attn_plain_f64(out, lse, weights, q, k, v, &a, scale, simd, n_threads);
}
