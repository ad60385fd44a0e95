/*
attention.c: fused scaled dot-product attention on the CPU, the kernel behind qkv.attention.

    out = softmax(scale * q k^T + mask) v      q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv)

FlashAttention's algorithm: keys are visited in tiles with an online softmax (a running max m and
sum l per query, the output accumulator rescaled by exp(m_old - m_new) when the max grows), so the
Lq x Lk score matrix is never materialised: extra memory is O(threads x tile), not O(L^2).

The contract (DESIGN.md): GQA/MQA (query head h reads kv head h / (Hq / Hkv)); causal bottom-right
(query i sees keys j <= i + Lk - Lq) or top-left (j <= i); bool or additive masks broadcast through
per-row offsets; kv_lengths (B,): row b sees keys j < kv_lengths[b], and bottom-right puts its
diagonal there, j <= i + kv_lengths[b] - Lq (FlashAttention's kv cache; attn_shift); strided q/k/v
(last axis contiguous); a query with no visible key gets zeros and lse = -inf; a hidden key (score
-inf) is skipped, never multiplied by p = 0, so NaN or Inf in masked K/V never reaches the output.

Paths (one place: attn_choose_path):
- plain (attention_plain.inc): one query row at a time, loops vectorised by the compiler, any D,
  float and double, the AVX-512 / AVX2 / baseline builds side by side. Also computes the weights
  when they are asked for (a second pass over the scores with each row's final m and l).
- tiled (attention_tiled.inc, float32, AVX-512 and AVX2): the fast path. Scores are computed
  transposed, S^T = K Q^T, so each SIMD vector runs along 16 (8) queries: the running max, sum and
  rescale of the online softmax are plain vector ops with no horizontal reductions. Register-blocked
  microkernels for K Q^T and P^T V, exp2 by polynomial with scale*log2(e) folded into Q, causal
  tiles skipped per 64-query sub-block, OpenMP over (batch, head, query block), costliest first.
  benchmarks/dev/attention_versions.py keeps the numbered versions that led here and what they taught.
- split-K (decode: few queries, many keys): the keys of each (batch, kv head) are split into chunks
  across threads; each chunk's partial (m, l, acc) is merged by log-sum-exp. For float32 the rows
  run through a SIMD row kernel (attention_tiled.inc); decode is bound by reading K/V from memory.
Shipped: split-K for Lq <= 16 (decode), tiled for float32 with AVX-512/AVX2 otherwise, plain for the
rest (float64 prefill, scalar builds) and whenever the weights are asked for.

Threads: every path is one or two loops of independent work items (plain: query rows; tiled: V-tile
flags, then query blocks; split-K: key chunks, then row merges) run by the one OpenMP driver,
attn_parallel, which owns the team, the per-thread scratch and the out-of-memory report. The plain
and split-K items live in attention_items.inc (per dtype), the tiled ones in attention_tiled.inc.

Backward (qkv.attention_backward, the last section): FlashAttention-2's algorithm over work items
(key chunk, batch, kv head), P recomputed from q, k and the forward's lse; a plain path
(attention_backward.inc, any D, float and double) and a float32 tiled one in the forward's layout
(attention_backward_tiled.inc, AVX-512 and AVX2, reusing its microkernels). The AVX-512 build is
compiled and tested where the CPU has it; it was written and measured on an AVX2-only machine.
benchmarks/dev/attention_backward_versions.py keeps its numbered versions.
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
} attn_args;

// causal: query i of batch b sees keys j <= i + attn_shift(a, b). Bottom-right puts the diagonal at
// the row's own length, kv_lengths[b] when given (FlashAttention's kv-cache alignment), else Lk.
static inline int64_t attn_shift(const attn_args* a, int64_t b) {
    if (a->causal != QKV_ATTN_CAUSAL_BOTTOM_RIGHT) return 0;
    return (a->kv_len ? a->kv_len[b] : a->Lk) - a->Lq;
}

// the visible keys of query i in batch b are [0, end)
static inline int64_t attn_key_end(const attn_args* a, int64_t b, int64_t i) {
    int64_t end = a->Lk;
    if (a->kv_len && a->kv_len[b] < end) end = a->kv_len[b];
    if (a->causal != QKV_ATTN_CAUSAL_NONE) {
        const int64_t diag = i + attn_shift(a, b) + 1;
        if (diag < end) end = diag;
    }
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
// the one OpenMP driver: every path is one or two loops of independent work items

// A loop of n items, item t done by run(job, t, scratch); threads take them `chunk` at a time.
typedef struct {
    void (*run)(const void* job, int64_t t, void* scratch);
    int64_t n;
    int chunk;
} attn_loop;

#define ATTN_NO_LOOP ((attn_loop){NULL, 0, 1})

// Run `first`, then `second` (it starts when every item of the first is done), on one team of
// n_threads threads, each owning `scratch` bytes of 64-byte aligned scratch. Items are handed out
// dynamically, but what an item computes depends on its index only: 1 and n threads give identical
// results.
static int attn_parallel(const void* job, size_t scratch, attn_loop first, attn_loop second, int n_threads) {
    int failed = 0;
    (void)n_threads;  // without OpenMP
    QKV_OMP(parallel num_threads(n_threads) if(n_threads > 1 && (first.n > 1 || second.n > 1)))
    {
        void* buf = attn_alloc(scratch);
        if (!buf) {
            QKV_OMP(atomic write)
            failed = 1;
        }
        QKV_OMP(for schedule(dynamic, first.chunk))
        for (int64_t t = 0; t < first.n; t++)
            if (buf) first.run(job, t, buf);
        if (second.n) {
            QKV_OMP(for schedule(dynamic, second.chunk))
            for (int64_t t = 0; t < second.n; t++)
                if (buf) second.run(job, t, buf);
        }
        free(buf);
    }
    return failed ? QKV_ENOMEM : QKV_OK;
}

// ---------------------------------------------------------------------------------------------
// plain path: 2 dtypes x 3 ISAs

#define QKV_INC "attention_plain.inc"
#include "qkv_dtype_instances.h"

// ---------------------------------------------------------------------------------------------
// backward: one call, as its work items read it (the plain items per dtype and ISA here, the tiled
// float32 ones after attention_tiled.inc in each ISA block, the driver at the end of this file)

typedef struct {
    const attn_args* a;
    void *dq, *dk, *dv;      // (B, Hq, Lq, D), (B, Hkv, Lk, D), (B, Hkv, Lk, Dv) contiguous
    void* dqpart;            // (nchunk - 1, B, Hq, Lq, D): the dq of key chunks 1.., or NULL
    const void *dout, *out;  // (B, Hq, Lq, Dv) contiguous
    const void* lse;         // (B, Hq, Lq) contiguous, natural log
    const void *q, *k, *v;   // strided as in attn_args
    double scale;
    int64_t chunk, nchunk;   // keys per chunk (a multiple of 64), chunks per (batch, kv head)
} attn_bwd_job;

#undef QKV_INC
#define QKV_INC "attention_backward.inc"
#include "qkv_dtype_instances.h"
#undef QKV_INC

// ---------------------------------------------------------------------------------------------
// tiled path (float32): helpers shared by the ISA builds, then AVX-512 and AVX2 instantiations

// block sizes (benchmarks/dev/attention_versions.py builds variants with -D overrides)
#ifndef BK
#define BK 64  // keys per tile
#endif
#ifndef NS
#define NS 4  // sub-blocks of NQ queries per work item (K/V tiles are reused across them from L1/L2)
#endif
#ifndef RK512
#define RK512 6  // AVX-512 K.Q^T microkernel: RK512 keys x 4 vectors of 16 queries in 24 zmm
#endif
#ifndef RD512
#define RD512 4  // AVX-512 P^T.V microkernel: RD512 value columns x 4 vectors of 16 queries
#endif
#ifndef BWD_QB
#define BWD_QB 64  // backward: queries per step (a multiple of 64: the sub-blocks of both ISAs)
#endif
#define ATTN_LOG2E 1.44269504088896341f

// Apply the user mask to St (nk, ldq) for the nq real lanes whose rows start at r0 (keys kt..kt+nk).
// Returns 0 (and does nothing) for a bool mask with a row per lane: the ISA builds do that one.
static int attn_tile_mask_f32(float* restrict St, int64_t ldq, const attn_args* a, int64_t r0, int64_t nq,
                               int64_t kt, int64_t nk) {
    const float ninf = qkv_neg_inf_f();
    int shared = 1;  // one mask row for every query of the block (a padding mask broadcast over queries)
    for (int64_t ln = 1; ln < nq; ln++) shared &= a->mask_off[r0 + ln] == a->mask_off[r0];
    if (shared) {  // whole rows of St at once: no strided scalar writes
        for (int64_t j = 0; j < nk; j++) {
            float* sj = St + j * ldq;
            if (a->mask_kind == QKV_ATTN_MASK_BOOL) {
                if (((const uint8_t*)a->mask)[a->mask_off[r0] + kt + j]) continue;
                for (int64_t ln = 0; ln < nq; ln++) sj[ln] = ninf;
            } else {
                const float x = ((const float*)a->mask)[a->mask_off[r0] + kt + j];
                if (x == ninf)
                    for (int64_t ln = 0; ln < nq; ln++) sj[ln] = ninf;
                else
                    for (int64_t ln = 0; ln < nq; ln++) sj[ln] += x * ATTN_LOG2E;
            }
        }
        return 1;
    }
    if (a->mask_kind == QKV_ATTN_MASK_BOOL) return 0;
    for (int64_t ln = 0; ln < nq; ln++) {  // additive, a row per lane: strided, every entry
        const float* ma = (const float*)a->mask + a->mask_off[r0 + ln] + kt;
        for (int64_t j = 0; j < nk; j++) {
            const float x = ma[j];
            St[j * ldq + ln] = x == ninf ? ninf : St[j * ldq + ln] + x * ATTN_LOG2E;
        }
    }
    return 1;
}

// does any of the nk rows (Dv wide, vl apart) hold a NaN or Inf?
static int attn_nonfinite_rows_f32(const float* V, int64_t vl, int64_t nk, int64_t Dv) {
    int bad = 0;
    for (int64_t j = 0; j < nk; j++) {
        const float* vj = V + j * vl;
        QKV_SIMD_LOOP(reduction(|:bad))
        for (int64_t d = 0; d < Dv; d++) {
            const float z = vj[d] - vj[d];  // 0 if finite, NaN otherwise
            bad |= z != z;
        }
    }
    return bad;
}

// One tiled call, as its work items read it (the ISA builds share it).
typedef struct {
    const attn_args* a;
    float* out;          // (B, Hq, Lq, Dv)
    float* lse;          // (B, Hq, Lq) or NULL
    const float *q, *k, *v;
    float qscale;        // scale * log2(e), folded into Q
    uint8_t* vbad;       // (B, Hkv, ntile): the V tile holds NaN/Inf
    int64_t ntile, nqb;  // key tiles per (batch, kv head), query blocks per (batch, head)
} attn_tiled_job;

// The tiled path's first loop: item t = (batch, kv head, key tile) flags its V tile in vbad.
static void attn_tiled_flag_item(const void* job, int64_t t, void* scratch) {
    const attn_tiled_job* jb = job;
    const attn_args* a = jb->a;
    const int64_t tile = t % jb->ntile, bk = t / jb->ntile, j0 = tile * BK;
    const float* vt = jb->v + (bk / a->Hkv) * a->vb + (bk % a->Hkv) * a->vh + j0 * a->vl;
    (void)scratch;
    jb->vbad[t] = (uint8_t)attn_nonfinite_rows_f32(vt, a->vl, a->Lk - j0 < BK ? a->Lk - j0 : BK, a->Dv);
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define QKV_ATTN_HAVE_TILED 1
#define ZB_VALID(n) ((n) >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << (n)) - 1))
#include <immintrin.h>

// exp2 coefficients: Taylor series of 2^r = e^(r ln2) to degree 6 on |r| <= 1/2 (relative error
// < 1.7e-7, under 1.5 ulp; the float32 tests allow 64 ulp): one FMA fewer than degree 7.
#define EXP2_C6 1.5403530393381606e-04f
#define EXP2_C5 1.3333558146428443e-03f
#define EXP2_C4 9.6181291076284772e-03f
#define EXP2_C3 5.5504108664821580e-02f
#define EXP2_C2 2.4022650695910071e-01f
#define EXP2_C1 6.9314718055994531e-01f

QKV_BEGIN_AVX512
// 2^x, x <= 0 (or NaN): exactly 0 below -126 (so at -inf), NaN stays NaN. x is clamped to -126 (max
// returns x if x is NaN) so that no intermediate is denormal: a denormal result costs a microcode
// assist on Intel (~100 cycles), which made masked tiles (-inf scores) ~40% slower with a -160 clamp.
// The zeroing is a masked vscalefps; the mask is "not x < -126", true for NaN.
static inline __m512 vexp2__avx512(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-126.0f);
    const __m512 xc = _mm512_max_ps(lo, x);
    const __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_sub_ps(xc, n);
    __m512 p = _mm512_set1_ps(EXP2_C6);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP2_C5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP2_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP2_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP2_C2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP2_C1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(_mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ), p, n);
}
#define ISA avx512
#define VF __m512
#define W 16
#define NV 4
#define RK RK512
#define RD RD512
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, x) _mm512_storeu_ps(p, x)
#define VSET1(x) _mm512_set1_ps(x)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VMUL(a, b) _mm512_mul_ps(a, b)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VSUB(a, b) _mm512_sub_ps(a, b)
#define VMAX(a, b) _mm512_max_ps(a, b)
#define VZERO _mm512_setzero_ps()
#define VSEL_EQ(a, b, x, y) _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ), y, x)
#define VHSUM(x) _mm512_reduce_add_ps(x)
// bit j set where p[j] == 0, j < n <= 64 (a masked load: no byte past p + n is touched)
#define ZERO_BYTES(p, n)                                                                                 \
    ((uint64_t)_mm512_testn_epi8_mask(_mm512_maskz_loadu_epi8(ZB_VALID(n), p),                           \
                                      _mm512_maskz_loadu_epi8(ZB_VALID(n), p)) & ZB_VALID(n))
#define VHIDE_BELOW(x, base, t)                                                                          \
    _mm512_mask_mov_ps(x,                                                                               \
                       _mm512_cmplt_epi32_mask(_mm512_add_epi32(_mm512_set1_epi32((int)(base)),          \
                                                                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, \
                                                                                  8, 9, 10, 11, 12, 13,  \
                                                                                  14, 15)),              \
                                               _mm512_set1_epi32((int)((t) < 4096 ? (t) : 4096))),       \
                       _mm512_set1_ps(qkv_neg_inf_f()))
#define RKB 4  // backward dK/dV microkernel: RKB keys x NCB vectors of columns
#define NCB 4
#define BWD_NS (BWD_QB >= 64 ? BWD_QB / 64 : 1)  // sub-blocks of 64 queries per backward step
#include "attention_isa.inc"
QKV_END_TARGET

QKV_BEGIN_AVX2
static inline float hsum8(__m256 x) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}
static inline uint64_t zero_bytes_avx2(const uint8_t* p, int n) {
    if (n < 64) {
        uint64_t z = 0;
        for (int j = 0; j < n; j++) z |= (uint64_t)(p[j] == 0) << j;
        return z;
    }
    const __m256i zero = _mm256_setzero_si256();
    const uint32_t lo = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i*)p), zero));
    const uint32_t hi =
        (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i*)(p + 32)), zero));
    return (uint64_t)lo | (uint64_t)hi << 32;
}
// 2^x for x <= 0 or NaN, as above; AVX2 has no vscalefps: 2^n is built in the exponent bits from x
// clamped to -126, and lanes below -126 (including -inf) are set to 0 afterwards.
static inline __m256 vexp2__avx2(__m256 x) {
    const __m256 xc = _mm256_max_ps(_mm256_set1_ps(-126.0f), x);  // NaN: max returns x
    const __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 r = _mm256_sub_ps(xc, n);
    __m256 p = _mm256_set1_ps(EXP2_C6);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP2_C5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP2_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP2_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP2_C2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP2_C1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_LT_OQ), y);
}
#ifndef RK2
#define RK2 4  // AVX2 K.Q^T microkernel: RK2 keys x 2 vectors of 8 queries
#endif
#ifndef RD2
#define RD2 4  // AVX2 P^T.V microkernel: RD2 value columns x 2 vectors of 8 queries
#endif
#define ISA avx2
#define VF __m256
#define W 8
#define NV 2
#define RK RK2
#define RD RD2
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, x) _mm256_storeu_ps(p, x)
#define VSET1(x) _mm256_set1_ps(x)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VMUL(a, b) _mm256_mul_ps(a, b)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VSUB(a, b) _mm256_sub_ps(a, b)
#define VMAX(a, b) _mm256_max_ps(a, b)
#define VZERO _mm256_setzero_ps()
#define VSEL_EQ(a, b, x, y) _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_EQ_OQ))
#define VHSUM(x) hsum8(x)
#define ZERO_BYTES(p, n) zero_bytes_avx2(p, n)
#define VHIDE_BELOW(x, base, t)                                                                          \
    _mm256_blendv_ps(x, _mm256_set1_ps(qkv_neg_inf_f()),                                                \
                     _mm256_castsi256_ps(_mm256_cmpgt_epi32(                                            \
                         _mm256_set1_epi32((int)((t) < 4096 ? (t) : 4096)),                              \
                         _mm256_add_epi32(_mm256_set1_epi32((int)(base)),                                \
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)))))
#ifndef RKB2
#define RKB2 4
#endif
#ifndef NCB2
#define NCB2 2
#endif
#define RKB RKB2  // backward dK/dV microkernel: RKB keys x NCB vectors of columns
#define NCB NCB2
#define BWD_NS (BWD_QB / 16)  // sub-blocks of 16 queries per backward step
#include "attention_isa.inc"
QKV_END_TARGET
#endif  // x86

// ---------------------------------------------------------------------------------------------
// split-K: the chunk kernel and the chunk size (the work items are in attention_items.inc)

// the split-K row kernel: the float32 SIMD one where the head dims allow, else the plain one
typedef void (*attn_part_f32)(float*, float*, const float*, const float*, int64_t, const float*, int64_t,
                              const uint8_t*, const float*, int64_t, int64_t, int64_t, int64_t, float, float*);
typedef void (*attn_part_f64)(double*, double*, const double*, const double*, int64_t, const double*, int64_t,
                              const uint8_t*, const double*, int64_t, int64_t, int64_t, int64_t, double, double*);
static attn_part_f32 attn_splitk_row_f32(const attn_args* a, int simd) {
#ifdef QKV_ATTN_HAVE_TILED
    if (simd >= QKV_SIMD_AVX512 && a->D % 16 == 0 && a->Dv % 16 == 0) return row_partial__avx512;
    if (simd == QKV_SIMD_AVX2 && a->D % 8 == 0 && a->Dv % 8 == 0) return row_partial__avx2;
#endif
    return simd >= QKV_SIMD_AVX512 ? attn_row_partial_f32_avx512
           : simd == QKV_SIMD_AVX2 ? attn_row_partial_f32_avx2 : attn_row_partial_f32_scalar;
}
static attn_part_f64 attn_splitk_row_f64(const attn_args* a, int simd) {
    (void)a;
    return simd >= QKV_SIMD_AVX512 ? attn_row_partial_f64_avx512
           : simd == QKV_SIMD_AVX2 ? attn_row_partial_f64_avx2 : attn_row_partial_f64_scalar;
}

#define SPLITK_MAX_LQ 16  // auto: split-K (with the SIMD row kernel) for at most this many queries
#define SPLITK_CHUNK 512  // keys per chunk (more for very long caches: at most 64 chunks)

static int64_t attn_splitk_chunk(int64_t Lk) {
    const int64_t c = (Lk + 63) / 64;
    return c > SPLITK_CHUNK ? c : SPLITK_CHUNK;
}

// ---------------------------------------------------------------------------------------------
// the plain and split-K paths of each dtype (their work items, handed to attn_parallel)

#define T float
#define SFX f32
#define EXP qkv_expf
#define LOG logf
#define NEG_INF qkv_neg_inf_f()
#include "attention_items.inc"
#undef T
#undef SFX
#undef EXP
#undef LOG
#undef NEG_INF

#define T double
#define SFX f64
#define EXP qkv_exp
#define LOG log
#define NEG_INF qkv_neg_inf_d()
#include "attention_items.inc"
#undef T
#undef SFX
#undef EXP
#undef LOG
#undef NEG_INF

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
    if (a->B < 0 || a->Hq <= 0 || a->Hkv <= 0 || a->Hq % a->Hkv || a->Lq < 0 || a->Lk < 0 || a->D <= 0 ||
        a->Dv <= 0)
        return QKV_EINVAL;
    if (mask_kind < 0 || mask_kind > 2 || (mask_kind && (!mask || !mask_row_off))) return QKV_EINVAL;
    if (causal < 0 || causal > 2) return QKV_EINVAL;
    return QKV_OK;
}

// The one place that picks a path. Only shapes, dtype, SIMD level and the request decide (never the
// thread count), so 1 and n threads give identical results.
static int attn_choose_path(int is_f32, const int64_t* shape, int has_weights, int path, int simd) {
    const int64_t Lq = shape[3];
#ifdef QKV_ATTN_HAVE_TILED
    const int tiled_ok = is_f32 && simd >= QKV_SIMD_AVX2 && !has_weights;
#else
    const int tiled_ok = 0;
#endif
    const int splitk_ok = !has_weights;  // the weights come from the plain path's second pass
    if (path == QKV_ATTN_PATH_TILED) return tiled_ok ? path : QKV_ATTN_PATH_PLAIN;
    if (path == QKV_ATTN_PATH_SPLITK) return splitk_ok ? path : QKV_ATTN_PATH_PLAIN;
    if (path != QKV_ATTN_PATH_AUTO) return QKV_ATTN_PATH_PLAIN;
    if (splitk_ok && Lq <= SPLITK_MAX_LQ) return QKV_ATTN_PATH_SPLITK;  // decode: 64-query tiles would idle
    if (tiled_ok && Lq > SPLITK_MAX_LQ) return QKV_ATTN_PATH_TILED;
    return QKV_ATTN_PATH_PLAIN;
}

int qkv_attention_path(int is_f32, const int64_t* shape, int has_weights, int path, int simd, int n_threads) {
    (void)n_threads;
    return attn_choose_path(is_f32, shape, has_weights, path, simd);
}

int qkv_attention_f32(float* out, float* lse, float* weights, const float* q, const float* k, const float* v,
                      const void* mask, int mask_kind, const int64_t* mask_row_off, const int64_t* kv_lengths,
                      const int64_t* shape, const int64_t* stride, int causal, float scale, int path, int simd,
                      int n_threads) {
    attn_args a;
    int st = attn_make_args(&a, shape, stride, mask, mask_kind, mask_row_off, kv_lengths, causal);
    if (st) return st;
    if (a.B * a.Hq * a.Lq == 0) return QKV_OK;
    switch (attn_choose_path(1, shape, weights != NULL, path, simd)) {
#ifdef QKV_ATTN_HAVE_TILED
        case QKV_ATTN_PATH_TILED:
            return simd >= QKV_SIMD_AVX512 ? attn_tiled__avx512(out, lse, q, k, v, &a, scale, n_threads)
                                           : attn_tiled__avx2(out, lse, q, k, v, &a, scale, n_threads);
#endif
        case QKV_ATTN_PATH_SPLITK:
            return attn_splitk_f32(out, lse, q, k, v, &a, scale, simd, n_threads);
        default:
            return attn_plain_f32(out, lse, weights, q, k, v, &a, scale, simd, n_threads);
    }
}

int qkv_attention_f64(double* out, double* lse, double* weights, const double* q, const double* k,
                      const double* v, const void* mask, int mask_kind, const int64_t* mask_row_off,
                      const int64_t* kv_lengths, const int64_t* shape, const int64_t* stride, int causal,
                      double scale, int path, int simd, int n_threads) {
    attn_args a;
    int st = attn_make_args(&a, shape, stride, mask, mask_kind, mask_row_off, kv_lengths, causal);
    if (st) return st;
    if (a.B * a.Hq * a.Lq == 0) return QKV_OK;
    if (attn_choose_path(0, shape, weights != NULL, path, simd) == QKV_ATTN_PATH_SPLITK)
        return attn_splitk_f64(out, lse, q, k, v, &a, scale, simd, n_threads);
    return attn_plain_f64(out, lse, weights, q, k, v, &a, scale, simd, n_threads);
}

// ---------------------------------------------------------------------------------------------
// backward: the driver and entry points
//
// FlashAttention-2's backward (attention_backward.inc, attention_backward_tiled.inc): P is recomputed
// tile by tile from q, k and the forward's lse, D = rowsum(dO * O), then dV += P^T dO, dP = dO V^T,
// dS = P (dP - D), dQ += scale dS K, dK += scale dS^T Q; the Lq x Lk matrix is never materialised.
// Work items are (key chunk, batch, kv head), chunk-major (under a causal mask the first chunks are
// the costliest): an item owns the dk/dv rows of its keys, summed over the group's query heads in
// order, so no atomics. Its share of dq goes to dq (chunk 0) or to that chunk's partial buffer; a
// second loop adds the partials to dq row by row in chunk order. The chunking depends on the shapes
// only: 1 and n threads give identical bits. Extra memory: the partials (capped at
// ATTN_BWD_PART_BYTES, none when B * Hkv alone gives ATTN_BWD_ITEMS items) and per-thread scratch.

#define ATTN_BWD_ITEMS 24                // aim for at least this many work items
#define ATTN_BWD_PART_BYTES (48LL << 20)  // at most this much for the partial dq of chunks 1..

static void attn_bwd_chunks(const attn_args* a, size_t elem, int64_t* chunk, int64_t* nchunk) {
    const int64_t ntile = (a->Lk + 63) / 64, bh = a->B * a->Hkv;
    const double part = (double)elem * (double)(a->B * a->Hq * a->Lq * a->D);
    int64_t n = (ATTN_BWD_ITEMS + bh - 1) / bh;
    const int64_t cap = 1 + (int64_t)((double)ATTN_BWD_PART_BYTES / (part > 1 ? part : 1));
    if (n > cap) n = cap;
    if (n > ntile) n = ntile;
    if (n < 1) n = 1;
    *chunk = (ntile + n - 1) / n * 64;
    *nchunk = (a->Lk + *chunk - 1) / *chunk;
}

// The one place that picks the backward path (shapes, dtype, SIMD level and request, never the thread
// count). The tiled one needs float32, AVX2 or better, and head dims that fill whole vectors.
static int attn_bwd_choose_path(int is_f32, const int64_t* shape, int path, int simd) {
#ifdef QKV_ATTN_HAVE_TILED
    const int w = simd >= QKV_SIMD_AVX512 ? 16 : 8;
    const int tiled_ok = is_f32 && simd >= QKV_SIMD_AVX2 && shape[5] % w == 0 && shape[6] % w == 0;
#else
    const int tiled_ok = 0;
    (void)is_f32; (void)shape; (void)simd;
#endif
    return (path == QKV_ATTN_PATH_AUTO || path == QKV_ATTN_PATH_TILED) && tiled_ok ? QKV_ATTN_PATH_TILED
                                                                                   : QKV_ATTN_PATH_PLAIN;
}

int qkv_attention_backward_path(int is_f32, const int64_t* shape, int path, int simd) {
    return attn_bwd_choose_path(is_f32, shape, path, simd);
}

static int attn_bwd_run(attn_bwd_job* jb, size_t elem, void (*item)(const void*, int64_t, void*),
                        void (*reduce)(const void*, int64_t, void*), size_t scratch, int n_threads) {
    const attn_args* a = jb->a;
    attn_bwd_chunks(a, elem, &jb->chunk, &jb->nchunk);
    jb->dqpart = NULL;
    if (jb->nchunk > 1) {
        jb->dqpart = attn_alloc(elem * (size_t)((jb->nchunk - 1) * a->B * a->Hq * a->Lq * a->D));
        if (!jb->dqpart) return QKV_ENOMEM;
    }
    const attn_loop items = {item, jb->nchunk * a->B * a->Hkv, 1};
    const attn_loop rows = jb->nchunk > 1 ? (attn_loop){reduce, a->B * a->Hq * a->Lq, 64} : ATTN_NO_LOOP;
    const int st = attn_parallel(jb, scratch, items, rows, n_threads);
    free(jb->dqpart);
    return st;
}

#ifdef QKV_ATTN_HAVE_TILED
// tiled scratch: Qt, Qr, dQt (D, BWD_QB); dOt, dOr (Dv, BWD_QB); St, dSt (BK, BWD_QB); Kf (BK, D);
// lse2, Dl (BWD_QB); the K-tile flags of one chunk
static size_t attn_bwd_tiled_scratch(const attn_args* a, size_t elem) {
    const int64_t nq = BWD_QB > 64 ? BWD_QB : 64;
    int64_t chunk, nchunk;
    attn_bwd_chunks(a, elem, &chunk, &nchunk);
    return sizeof(float) * (size_t)(3 * a->D * nq + 2 * a->Dv * nq + 2 * BK * nq + BK * a->D + 2 * nq) +
           (size_t)(chunk / BK + 64);
}
#endif

// both dtypes: check the arguments, then the tiled or the plain items of the SIMD level
typedef void (*attn_item_fn)(const void*, int64_t, void*);
static int attn_backward(attn_bwd_job* jb, attn_args* a, size_t elem, const int64_t* shape,
                         const int64_t* stride, const void* mask, int mask_kind, const int64_t* mask_row_off,
                         const int64_t* kv_lengths, int causal, int path, int simd, int n_threads,
                         const attn_item_fn plain[3], attn_item_fn reduce) {
    const int st = attn_make_args(a, shape, stride, mask, mask_kind, mask_row_off, kv_lengths, causal);
    if (st) return st;
    jb->a = a;
    if (a->Lk == 0 || a->B * a->Hq * a->Lq == 0) {  // nothing visible anywhere: zero gradients
        memset(jb->dq, 0, elem * (size_t)(a->B * a->Hq * a->Lq * a->D));
        memset(jb->dk, 0, elem * (size_t)(a->B * a->Hkv * a->Lk * a->D));
        memset(jb->dv, 0, elem * (size_t)(a->B * a->Hkv * a->Lk * a->Dv));
        return QKV_OK;
    }
#ifdef QKV_ATTN_HAVE_TILED
    if (attn_bwd_choose_path(elem == sizeof(float), shape, path, simd) == QKV_ATTN_PATH_TILED)
        return attn_bwd_run(jb, elem, simd >= QKV_SIMD_AVX512 ? bwd_tiled_item__avx512 : bwd_tiled_item__avx2,
                            reduce, attn_bwd_tiled_scratch(a, elem), n_threads);
#endif
    return attn_bwd_run(jb, elem, plain[simd >= QKV_SIMD_AVX512 ? 2 : simd == QKV_SIMD_AVX2 ? 1 : 0], reduce,
                        elem * PLAIN_BK, n_threads);
}

int qkv_attention_backward_f32(float* dq, float* dk, float* dv, const float* dout, const float* q,
                               const float* k, const float* v, const float* out, const float* lse,
                               const void* mask, int mask_kind, const int64_t* mask_row_off,
                               const int64_t* kv_lengths, const int64_t* shape, const int64_t* stride,
                               int causal, float scale, int path, int simd, int n_threads) {
    static const attn_item_fn plain[3] = {attn_bwd_plain_item_f32_scalar, attn_bwd_plain_item_f32_avx2,
                                          attn_bwd_plain_item_f32_avx512};
    attn_args a;
    attn_bwd_job jb = {.dq = dq, .dk = dk, .dv = dv, .dout = dout, .out = out, .lse = lse, .q = q, .k = k,
                       .v = v, .scale = scale};
    return attn_backward(&jb, &a, sizeof(float), shape, stride, mask, mask_kind, mask_row_off, kv_lengths, causal,
                         path, simd, n_threads, plain, attn_bwd_reduce_item_f32_scalar);
}

int qkv_attention_backward_f64(double* dq, double* dk, double* dv, const double* dout, const double* q,
                               const double* k, const double* v, const double* out, const double* lse,
                               const void* mask, int mask_kind, const int64_t* mask_row_off,
                               const int64_t* kv_lengths, const int64_t* shape, const int64_t* stride,
                               int causal, double scale, int path, int simd, int n_threads) {
    static const attn_item_fn plain[3] = {attn_bwd_plain_item_f64_scalar, attn_bwd_plain_item_f64_avx2,
                                          attn_bwd_plain_item_f64_avx512};
    attn_args a;
    attn_bwd_job jb = {.dq = dq, .dk = dk, .dv = dv, .dout = dout, .out = out, .lse = lse, .q = q, .k = k,
                       .v = v, .scale = scale};
    return attn_backward(&jb, &a, sizeof(double), shape, stride, mask, mask_kind, mask_row_off, kv_lengths,
                         causal, path, simd, n_threads, plain, attn_bwd_reduce_item_f64_scalar);
}
