/*
qkv_reduce.h: deterministic sums over rows (column sums), for the backward kernels' parameter
gradients (layer norm dweight/dbias, linear dbias).

Threads must not decide the order of a floating-point sum, or the bits would change with the
thread count. So rows are cut into a fixed number of chunks that depends on the shape only
(qkv_reduce_chunks), each chunk sums its rows in order into its own partial row, whichever thread
runs it, and qkv_sum_partials adds the partial rows in chunk order. Threads only decide who does
which chunk. The partial rows cost n_chunks x width elements, at most ~16 MB.
*/
#ifndef QKV_REDUCE_H
#define QKV_REDUCE_H

#include "qkv_common.h"

#define QKV_REDUCE_MAX_CHUNKS 64
#define QKV_REDUCE_MIN_ROWS 16

// Chunks for R rows whose partial rows are `width` elements: enough for 64 threads, at least 16
// rows each, at most 4M partial elements.
static inline int64_t qkv_reduce_chunks(int64_t R, int64_t width) {
    int64_t n = (R + QKV_REDUCE_MIN_ROWS - 1) / QKV_REDUCE_MIN_ROWS;
    int64_t cap = ((int64_t)1 << 22) / (width > 0 ? width : 1);
    if (n > QKV_REDUCE_MAX_CHUNKS) n = QKV_REDUCE_MAX_CHUNKS;
    if (n > cap) n = cap;
    return n < 1 ? 1 : n;
}

// Rows [r0, r1) of chunk c of n over R rows.
static inline void qkv_chunk_rows(int64_t R, int64_t n, int64_t c, int64_t* r0, int64_t* r1) {
    int64_t per = (R + n - 1) / n;
    *r0 = c * per < R ? c * per : R;
    *r1 = (c + 1) * per < R ? (c + 1) * per : R;
}

// out (N,) = sum over c in order of partial[c * stride + j], j < N. Threads split the columns.
#define QKV_SUM_PARTIALS(T, SFX)                                                                      \
    static void qkv_sum_partials_##SFX(T* restrict out, const T* restrict partial, int64_t n_chunks,    \
                                       int64_t stride, int64_t N, int n_threads) {                     \
        const int64_t block = 1024, n_blocks = (N + block - 1) / block;                               \
        const int parallel = n_threads > 1 && n_chunks * N >= 65536;                                  \
        (void)parallel;                                                                               \
        QKV_OMP(parallel for schedule(static) num_threads(n_threads) if(parallel))                    \
        for (int64_t b = 0; b < n_blocks; b++) {                                                      \
            const int64_t j0 = b * block, j1 = j0 + block < N ? j0 + block : N;                       \
            for (int64_t j = j0; j < j1; j++) out[j] = partial[j];                                    \
            for (int64_t c = 1; c < n_chunks; c++) {                                                  \
                const T* p = partial + c * stride;                                                    \
                QKV_SIMD_LOOP()                                                                       \
                for (int64_t j = j0; j < j1; j++) out[j] += p[j];                                     \
            }                                                                                         \
        }                                                                                             \
    }

QKV_SUM_PARTIALS(float, f32)
QKV_SUM_PARTIALS(double, f64)

#endif  // QKV_REDUCE_H
