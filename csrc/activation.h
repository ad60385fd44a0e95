// activation.h: bias + activation over rows (GELU, and the linear epilogue), and its backward.
// See activation.c.
#ifndef QKV_ACTIVATION_H
#define QKV_ACTIVATION_H
#include <stdint.h>

#define QKV_ACT_NONE 0
#define QKV_ACT_GELU_TANH 1
#define QKV_ACT_GELU_ERF 2
#define QKV_ACT_RELU 3

int qkv_bias_act_f32(float* out, const float* x, const float* bias, int64_t R, int64_t N, int act, int simd,
                     int n_threads);
int qkv_bias_act_f64(double* out, const double* x, const double* bias, int64_t R, int64_t N, int act, int simd,
                     int n_threads);
// backward: dx = dy * act'(x) (dx may be NULL), dbias (N,) = column sums of dx or NULL; x may be
// NULL for QKV_ACT_NONE
int qkv_act_backward_f32(float* dx, float* dbias, const float* dy, const float* x, int64_t R, int64_t N, int act,
                         int simd, int n_threads);
int qkv_act_backward_f64(double* dx, double* dbias, const double* dy, const double* x, int64_t R, int64_t N,
                         int act, int simd, int n_threads);
// SwiGLU: out (R, N) contiguous = silu(gate) * up; gate / up rows ldg / ldu elements apart
int qkv_swiglu_f32(float* out, const float* gate, const float* up, int64_t R, int64_t N, int64_t ldg, int64_t ldu,
                   int simd, int n_threads);
int qkv_swiglu_f64(double* out, const double* gate, const double* up, int64_t R, int64_t N, int64_t ldg,
                   int64_t ldu, int simd, int n_threads);
// backward: dgate = dy up silu'(gate), dup = dy silu(gate); all (R, N) contiguous
int qkv_swiglu_backward_f32(float* dgate, float* dup, const float* dy, const float* gate, const float* up, int64_t R,
                            int64_t N, int simd, int n_threads);
int qkv_swiglu_backward_f64(double* dgate, double* dup, const double* dy, const double* gate, const double* up,
                            int64_t R, int64_t N, int simd, int n_threads);
#endif
