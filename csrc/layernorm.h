// layernorm.h: layer norm over the last axis, and its backward. See layernorm.c.
#ifndef QKV_LAYERNORM_H
#define QKV_LAYERNORM_H
#include <stdint.h>
// mean, rstd (R,) or NULL: the row statistics, written on request
int qkv_layernorm_f32(float* out, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                      int64_t R, int64_t C, float eps, int simd, int n_threads);
int qkv_layernorm_f64(double* out, double* mean, double* rstd, const double* x, const double* weight,
                      const double* bias, int64_t R, int64_t C, double eps, int simd, int n_threads);
// dx (R, C); dweight, dbias (C,) or NULL (not wanted); weight (C,) or NULL; mean, rstd (R,) both
// or neither (then recomputed from x and eps)
int qkv_layernorm_backward_f32(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                               const float* weight, const float* mean, const float* rstd, int64_t R, int64_t C,
                               float eps, int simd, int n_threads);
int qkv_layernorm_backward_f64(double* dx, double* dweight, double* dbias, const double* dy, const double* x,
                               const double* weight, const double* mean, const double* rstd, int64_t R,
                               int64_t C, double eps, int simd, int n_threads);
#endif
