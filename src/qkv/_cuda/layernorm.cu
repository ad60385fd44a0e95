// layernorm.cu: layer norm over the last axis, one CTA per row.
//
//   y[r, :] = (x[r, :] - mean) / sqrt(var + eps) * weight + bias      (biased variance)
//
// x, y (R, C) contiguous rows; weight, bias (C,) or null. Two passes in fp32 (mean, then the sum
// of squared deviations) so a large mean does not cancel the variance, then the write pass.
#include "common.cuh"

__device__ __forceinline__ float ln_block_sum(float v, float* red) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    v = qkv::warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = lane < nw ? red[lane] : 0.f;
    r = qkv::warp_sum(r);
    __syncthreads();
    return r;
}

template <typename T>
__global__ void layernorm_rows(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ weight,
                               const T* __restrict__ bias, int R, int C, float eps) {
    __shared__ float red[32];
    const T* xr = x + (long long)blockIdx.x * C;
    T* yr = y + (long long)blockIdx.x * C;
    float s = 0.f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) s += qkv::to_float(xr[j]);
    const float mean = ln_block_sum(s, red) / C;
    float ss = 0.f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float d = qkv::to_float(xr[j]) - mean;
        ss += d * d;
    }
    const float rstd = 1.f / sqrtf(ln_block_sum(ss, red) / C + eps);
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float t = (qkv::to_float(xr[j]) - mean) * rstd;
        if (weight) t *= qkv::to_float(weight[j]);
        if (bias) t += qkv::to_float(bias[j]);
        yr[j] = qkv::from_float<T>(t);
    }
}
