// softmax.h: masked, scaled, numerically stable softmax over rows. See softmax.c.
#ifndef QKV_SOFTMAX_H
#define QKV_SOFTMAX_H
#include <stdint.h>

// mask_kind
#define QKV_MASK_NONE 0
#define QKV_MASK_BOOL 1      // uint8, nonzero = keep
#define QKV_MASK_ADD 2       // same dtype as x, added to the scaled scores; -inf = masked
// causal
#define QKV_CAUSAL_NONE 0
#define QKV_CAUSAL_BOTTOM_RIGHT 1
#define QKV_CAUSAL_TOP_LEFT 2

int qkv_softmax_f32(float* out, const float* x, const void* mask, int mask_kind, const int64_t* mask_row_off,
                    int64_t R, int64_t N, int64_t M, int causal, float scale, int simd, int n_threads);
int qkv_softmax_f64(double* out, const double* x, const void* mask, int mask_kind, const int64_t* mask_row_off,
                    int64_t R, int64_t N, int64_t M, int causal, double scale, int simd, int n_threads);
#endif
