// optim.cu: AdamW, the fused update of one parameter (what csrc/optim.c does on the CPU), in the
// order torch.optim.AdamW writes it:
//     p = p * decay                                  decay = 1 - lr * weight_decay (1: no decay)
//     m = m + (1 - beta1) * (g - m)
//     v = beta2 * v + (1 - beta2) * g * g
//     p = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)
// step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t) come from the host. p and g are
// T (float, __half, __nv_bfloat16); the moments m and v are always fp32, and the arithmetic too.
// Elements are independent: a grid-stride loop, the same bits for any launch shape.
#include "common.cuh"

template <typename T>
__global__ void adamw(T* __restrict__ p, const T* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                      long long n, float beta1, float beta2, float eps, float step_size, float bc2_sqrt, float decay) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float gi = qkv::to_float(g[i]);
        const float mi = m[i] + (1.f - beta1) * (gi - m[i]);
        const float vi = beta2 * v[i] + (1.f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float pi = qkv::to_float(p[i]) * decay;
        p[i] = qkv::from_float<T>(pi - step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps)));
    }
}
