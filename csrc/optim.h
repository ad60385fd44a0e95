// optim.h: the fused AdamW update of one parameter. See optim.c.
#ifndef QKV_OPTIM_H
#define QKV_OPTIM_H
#include <stdint.h>
// p, m, v updated in place from g, n elements each; step_size = lr / (1 - beta1^t),
// bc2_sqrt = sqrt(1 - beta2^t), decay = 1 - lr * weight_decay (1 for no decay)
int qkv_adamw_f32(float* p, const float* g, float* m, float* v, int64_t n, double beta1, double beta2, double eps,
                  double step_size, double bc2_sqrt, double decay, int simd, int n_threads);
int qkv_adamw_f64(double* p, const double* g, double* m, double* v, int64_t n, double beta1, double beta2,
                  double eps, double step_size, double bc2_sqrt, double decay, int simd, int n_threads);
// the sum of x[i]^2 over n elements, in double; the same bits for any thread count
double qkv_sumsq_f32(const float* x, int64_t n, int n_threads);
double qkv_sumsq_f64(const double* x, int64_t n, int n_threads);
#endif
