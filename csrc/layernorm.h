// layernorm.h: layer norm over the last axis. See layernorm.c.
#ifndef QKV_LAYERNORM_H
#define QKV_LAYERNORM_H
#include <stdint.h>
int qkv_layernorm_f32(float* out, const float* x, const float* weight, const float* bias, int64_t R, int64_t C,
                      float eps, int simd, int n_threads);
int qkv_layernorm_f64(double* out, const double* x, const double* weight, const double* bias, int64_t R, int64_t C,
                      double eps, int simd, int n_threads);
#endif
