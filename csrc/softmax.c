/*
softmax.c: masked, scaled softmax over the last axis, the CPU kernel behind qkv.softmax.

x and out are (R, N): R rows of N scores, contiguous. Each row r is one query; its query index
within its group of M rows is i = r % M (M is the size of axis -2, for causal masks).
- scale multiplies x before anything else.
- mask_kind: none, bool (uint8, nonzero = keep) or additive (T, added after scaling; -inf = masked).
  The mask row of x's row r starts at mask + mask_row_off[r]; its columns are contiguous. Python
  computes the offsets from the broadcast mask's strides, so any broadcastable mask costs no copy.
- causal: bottom_right lets query i see keys j <= i + N - M (KV-cache decoding); top_left j <= i.
- Masked probabilities are exactly 0. A row with no visible finite score is all zeros. NaN in a
  visible score makes its row NaN; NaN in a masked position changes nothing.

Three passes per row (max, exp+sum, normalise), each a vectorised loop. The row loops are compiled
for AVX-512, AVX2 and the baseline ISA (softmax.inc), and threads split the rows.

Also here, because they are softmaxes too:
- the backward (qkv.softmax_backward): dx = scale * y * (dy - sum(dy * y)) per row, from y;
- the fused cross-entropy (qkv.cross_entropy): per row, the loss lse - x[target] and the gradient
  (softmax - onehot) * gscale written straight into dlogits, in one sweep over the row (an online
  max/sum pass, then the write pass); no (R, V) buffer besides dlogits. Rows whose target is
  ignore_index get loss 0 and a zero gradient row. Per-row losses (double) go to `losses`; the
  caller sums them in a fixed order.
*/
#include "qkv_common.h"
#include "qkv_math.h"
#include "softmax.h"

// ---------------------------------------------------------------------------------------------
// row kernels: 2 dtypes x 3 ISAs

#define QKV_INC "softmax.inc"
#include "qkv_dtype_instances.h"

// ---------------------------------------------------------------------------------------------
// drivers: pick the ISA, split rows across threads

#define SOFTMAX_DRIVER(T, SFX)                                                                        \
    int qkv_softmax_##SFX(T* out, const T* x, const void* mask, int mask_kind, const int64_t* mask_row_off, \
                          int64_t R, int64_t N, int64_t M, int causal, T scale, int simd, int n_threads) { \
        if (R < 0 || N <= 0 || M <= 0 || (mask_kind != QKV_MASK_NONE && !mask_row_off)) return QKV_EINVAL;   \
        void (*row)(T*, const T*, const uint8_t*, const T*, int64_t, int64_t, T) =                   \
            simd >= QKV_SIMD_AVX512 ? softmax_row_##SFX##_avx512                                      \
            : simd == QKV_SIMD_AVX2 ? softmax_row_##SFX##_avx2 : softmax_row_##SFX##_scalar;          \
        const int64_t shift = causal == QKV_CAUSAL_BOTTOM_RIGHT ? N - M : 0;                          \
        const int parallel = n_threads > 1 && R * N >= 32768;                                         \
        (void)parallel;                                                                               \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                    \
        for (int64_t r = 0; r < R; r++) {                                                             \
            int64_t nvis = N;                                                                         \
            if (causal != QKV_CAUSAL_NONE) {                                                          \
                int64_t lim = r % M + shift + 1; /* keys [0, lim) visible */                          \
                nvis = lim < 0 ? 0 : (lim > N ? N : lim);                                             \
            }                                                                                         \
            const uint8_t* mb = mask_kind == QKV_MASK_BOOL ? (const uint8_t*)mask + mask_row_off[r] : NULL; \
            const T* ma = mask_kind == QKV_MASK_ADD ? (const T*)mask + mask_row_off[r] : NULL;        \
            row(out + r * N, x + r * N, mb, ma, nvis, N, scale);                                      \
        }                                                                                             \
        return QKV_OK;                                                                                \
    }

SOFTMAX_DRIVER(float, f32)
SOFTMAX_DRIVER(double, f64)

// ---------------------------------------------------------------------------------------------
// backward and cross-entropy drivers

#define SOFTMAX_BACKWARD_DRIVER(T, SFX)                                                               \
    int qkv_softmax_backward_##SFX(T* dx, const T* dy, const T* y, int64_t R, int64_t N, T scale, int simd, \
                                   int n_threads) {                                                   \
        if (R < 0 || N <= 0) return QKV_EINVAL;                                                       \
        void (*row)(T*, const T*, const T*, int64_t, T) =                                             \
            simd >= QKV_SIMD_AVX512 ? softmax_backward_row_##SFX##_avx512                             \
            : simd == QKV_SIMD_AVX2 ? softmax_backward_row_##SFX##_avx2                               \
                                    : softmax_backward_row_##SFX##_scalar;                            \
        const int parallel = n_threads > 1 && R * N >= 32768;                                         \
        (void)parallel;                                                                               \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                    \
        for (int64_t r = 0; r < R; r++) row(dx + r * N, dy + r * N, y + r * N, N, scale);             \
        return QKV_OK;                                                                                \
    }

SOFTMAX_BACKWARD_DRIVER(float, f32)
SOFTMAX_BACKWARD_DRIVER(double, f64)

#define CROSS_ENTROPY_DRIVER(T, SFX)                                                                  \
    int qkv_cross_entropy_##SFX(T* dx, double* losses, const T* x, const int64_t* targets, int64_t R,  \
                                int64_t V, int64_t ignore_index, T gscale, int simd, int n_threads) {  \
        if (R < 0 || V <= 0) return QKV_EINVAL;                                                       \
        double (*row)(T*, const T*, int64_t, int64_t, T) =                                            \
            simd >= QKV_SIMD_AVX512 ? cross_entropy_row_##SFX##_avx512                                \
            : simd == QKV_SIMD_AVX2 ? cross_entropy_row_##SFX##_avx2 : cross_entropy_row_##SFX##_scalar; \
        for (int64_t r = 0; r < R; r++)                                                               \
            if (targets[r] != ignore_index && (targets[r] < 0 || targets[r] >= V)) return QKV_EINVAL; \
        const int parallel = n_threads > 1 && R * V >= 32768;                                         \
        (void)parallel;                                                                               \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                    \
        for (int64_t r = 0; r < R; r++) {                                                             \
            T* d = dx ? dx + r * V : NULL;                                                            \
            if (targets[r] == ignore_index) {                                                         \
                losses[r] = 0;                                                                        \
                if (d) memset(d, 0, (size_t)V * sizeof(T));                                           \
            } else {                                                                                  \
                losses[r] = row(d, x + r * V, V, targets[r], gscale);                                 \
            }                                                                                         \
        }                                                                                             \
        return QKV_OK;                                                                                \
    }

CROSS_ENTROPY_DRIVER(float, f32)
CROSS_ENTROPY_DRIVER(double, f64)
