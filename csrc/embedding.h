// embedding.h: the embedding backward (a deterministic scatter-add). See embedding.c.
#ifndef QKV_EMBEDDING_H
#define QKV_EMBEDDING_H
#include <stdint.h>
// dtable (V, C) = for each v, the sum of the rows of dout (n, C) whose ids (n,) are v
int qkv_embedding_backward_f32(float* dtable, const float* dout, const int64_t* ids, int64_t n, int64_t V, int64_t C,
                               int simd, int n_threads);
int qkv_embedding_backward_f64(double* dtable, const double* dout, const int64_t* ids, int64_t n, int64_t V,
                               int64_t C, int simd, int n_threads);
#endif
