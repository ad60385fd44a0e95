/*
embedding.c: the backward of an embedding lookup (table[ids]), the CPU kernel behind
qkv.embedding_backward. The forward is a plain gather (NumPy indexing on the CPU).

dout (n, C) holds the gradients of the n looked-up rows, ids (n,) their ids in [0, V);
dtable (V, C) gets, in row v, the sum of the dout rows whose id is v (0 where no id is v).

A scatter-add by threads would race, and with atomics the order of the additions (and so the
bits) would change from run to run. Instead a counting sort groups the positions by id, keeping
position order within an id (sequential, O(n + V)), and then each dtable row is owned by one
thread and sums its dout rows in position order: the same bits for any thread count. The add
loops are compiled for AVX-512, AVX2 and baseline (embedding.inc).
*/
#include <stdlib.h>
#include "qkv_common.h"
#include "embedding.h"

#define QKV_INC "embedding.inc"
#include "qkv_dtype_instances.h"

// start (V + 1,): the positions of id v are order[start[v] .. start[v + 1]), increasing
static int embedding_group(int64_t* start, int64_t* order, const int64_t* ids, int64_t n, int64_t V) {
    memset(start, 0, (size_t)(V + 1) * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= V) return QKV_EINVAL;
        start[ids[i] + 1]++;
    }
    for (int64_t v = 0; v < V; v++) start[v + 1] += start[v];
    int64_t* next = (int64_t*)malloc((size_t)V * sizeof(int64_t));
    if (!next) return QKV_ENOMEM;
    memcpy(next, start, (size_t)V * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) order[next[ids[i]]++] = i;
    free(next);
    return QKV_OK;
}

#define EMBEDDING_BACKWARD_DRIVER(T, SFX)                                                             \
    int qkv_embedding_backward_##SFX(T* dtable, const T* dout, const int64_t* ids, int64_t n, int64_t V, \
                                     int64_t C, int simd, int n_threads) {                            \
        if (n < 0 || V <= 0 || C <= 0) return QKV_EINVAL;                                             \
        void (*row)(T*, const T*, const int64_t*, int64_t, int64_t) =                                 \
            simd >= QKV_SIMD_AVX512 ? embedding_backward_row_##SFX##_avx512                           \
            : simd == QKV_SIMD_AVX2 ? embedding_backward_row_##SFX##_avx2                             \
                                    : embedding_backward_row_##SFX##_scalar;                          \
        int64_t* start = (int64_t*)malloc((size_t)(V + 1) * sizeof(int64_t));                         \
        int64_t* order = (int64_t*)malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));                 \
        int status = start && order ? embedding_group(start, order, ids, n, V) : QKV_ENOMEM;          \
        if (status == QKV_OK) {                                                                       \
            const int parallel = n_threads > 1 && (V + n) * C >= 32768;                               \
            (void)parallel;                                                                           \
            QKV_OMP(parallel for schedule(dynamic, 64) num_threads(n_threads) if(parallel))           \
            for (int64_t v = 0; v < V; v++)                                                           \
                row(dtable + v * C, dout, order + start[v], start[v + 1] - start[v], C);              \
        }                                                                                             \
        free(start);                                                                                  \
        free(order);                                                                                  \
        return status;                                                                                \
    }

EMBEDDING_BACKWARD_DRIVER(float, f32)
EMBEDDING_BACKWARD_DRIVER(double, f64)
