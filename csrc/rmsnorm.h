// rmsnorm.h: RMSNorm over the last axis, and its backward. See rmsnorm.c.
#ifndef QKV_RMSNORM_H
#define QKV_RMSNORM_H
#include <stdint.h>
// rstd (R,) or NULL: the row statistic, written on request; weight (C,) or NULL
int qkv_rmsnorm_f32(float* out, float* rstd, const float* x, const float* weight, int64_t R, int64_t C, float eps,
                    int simd, int n_threads);
int qkv_rmsnorm_f64(double* out, double* rstd, const double* x, const double* weight, int64_t R, int64_t C,
                    double eps, int simd, int n_threads);
// dx (R, C); dweight (C,) or NULL (not wanted); weight (C,) or NULL; rstd (R,) or NULL (then
// recomputed from x and eps)
int qkv_rmsnorm_backward_f32(float* dx, float* dweight, const float* dy, const float* x, const float* weight,
                             const float* rstd, int64_t R, int64_t C, float eps, int simd, int n_threads);
int qkv_rmsnorm_backward_f64(double* dx, double* dweight, const double* dy, const double* x, const double* weight,
                             const double* rstd, int64_t R, int64_t C, double eps, int simd, int n_threads);
#endif
