// softmax.h: masked, scaled, numerically stable softmax over rows, its backward and the fused
// cross-entropy. See softmax.c.
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
// backward: dx = scale * y * (dy - sum(dy * y)) over rows of y = softmax(scale * x)
int qkv_softmax_backward_f32(float* dx, const float* dy, const float* y, int64_t R, int64_t N, float scale, int simd,
                             int n_threads);
int qkv_softmax_backward_f64(double* dx, const double* dy, const double* y, int64_t R, int64_t N, double scale,
                             int simd, int n_threads);
// fused cross-entropy: losses (R,) per row (0 where targets[r] == ignore_index); dx (R, V) or NULL
// gets (softmax - onehot) * gscale (zeros on ignored rows)
int qkv_cross_entropy_f32(float* dx, double* losses, const float* x, const int64_t* targets, int64_t R, int64_t V,
                          int64_t ignore_index, float gscale, int simd, int n_threads);
int qkv_cross_entropy_f64(double* dx, double* losses, const double* x, const int64_t* targets, int64_t R, int64_t V,
                          int64_t ignore_index, double gscale, int simd, int n_threads);
#endif
