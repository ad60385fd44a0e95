// rope.h: rotary position embeddings (Hugging Face Llama's rotate-half). See rope.c.
#ifndef QKV_ROPE_H
#define QKV_ROPE_H
#include <stdint.h>
// out, x (B, L, H, D) with element strides xs / os for (B, L, H) and a contiguous last axis (out
// may be x: in place); pos (B, L) int64 at element strides ps (ps[0] = 0 for one (L,) row shared
// by the batch); inv_freq (D/2,) float64; inverse != 0 rotates by the negative angle (backward)
int qkv_rope_f32(float* out, const float* x, const int64_t* pos, const double* inv_freq, int64_t B, int64_t L,
                 int64_t H, int64_t D, const int64_t* xs, const int64_t* os, const int64_t* ps, int inverse, int simd,
                 int n_threads);
int qkv_rope_f64(double* out, const double* x, const int64_t* pos, const double* inv_freq, int64_t B, int64_t L,
                 int64_t H, int64_t D, const int64_t* xs, const int64_t* os, const int64_t* ps, int inverse,
                 int simd, int n_threads);
#endif
