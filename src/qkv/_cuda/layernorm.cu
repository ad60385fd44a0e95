// layernorm.cu: layer norm over the last axis, one CTA per row, and its backward.
//
//   y[r, :] = (x[r, :] - mean) / sqrt(var + eps) * weight + bias      (biased variance)
//
// x, y (R, C) contiguous rows; weight, bias (C,) or null. Two passes in fp32 (mean, then the sum
// of squared deviations) so a large mean does not cancel the variance, then the write pass.
// mean, rstd (R,) fp32 or null: the row statistics, written for the backward on request.
//
// Backward (layernorm_bwd): one CTA per chunk of rows_per consecutive rows. For each row, with
// g = dy * weight and xhat = (x - mean) * rstd, dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
// (two block reductions, then the write). The CTA also sums dy * xhat and dy over its rows into
// its own partial rows (partial[chunk] = [dweight | dbias], fp32, 2C): column j is always
// handled by thread j % blockDim.x, so the read-modify-write needs no atomics. sum_partials
// (common.cuh) then adds the chunks in order: the same bits on every run.
//
// RMSNorm (rmsnorm_rows, rmsnorm_bwd; Llama, Qwen, Mistral): y = x * rstd * weight, rstd =
// 1/sqrt(mean(x^2) + eps), one CTA per row, the sum of squares in fp32; rstd (R,) fp32 on request.
// Backward per chunk of rows as above: dx = rstd * (g - xhat * mean(g * xhat)), g = dy * weight,
// xhat = x * rstd; partial[chunk] (C, fp32) sums dy * xhat for dweight (null without a weight).
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

// mean and rstd of one row (every thread of the CTA gets them)
template <typename T>
__device__ __forceinline__ void ln_stats(const T* xr, int C, float eps, float* red, float& mean, float& rstd) {
    float s = 0.f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) s += qkv::to_float(xr[j]);
    mean = ln_block_sum(s, red) / C;
    float ss = 0.f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float d = qkv::to_float(xr[j]) - mean;
        ss += d * d;
    }
    rstd = 1.f / sqrtf(ln_block_sum(ss, red) / C + eps);
}

template <typename T>
__global__ void layernorm_rows(T* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                               const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                               int R, int C, float eps) {
    __shared__ float red[32];
    const T* xr = x + (long long)blockIdx.x * C;
    T* yr = y + (long long)blockIdx.x * C;
    float mean, rstd;
    ln_stats(xr, C, eps, red, mean, rstd);
    if (threadIdx.x == 0 && mean_out) {
        mean_out[blockIdx.x] = mean;
        rstd_out[blockIdx.x] = rstd;
    }
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float t = (qkv::to_float(xr[j]) - mean) * rstd;
        if (weight) t *= qkv::to_float(weight[j]);
        if (bias) t += qkv::to_float(bias[j]);
        yr[j] = qkv::from_float<T>(t);
    }
}

template <typename T>
__global__ void layernorm_bwd(T* __restrict__ dx, float* __restrict__ partial, const T* __restrict__ dy,
                              const T* __restrict__ x, const T* __restrict__ weight, const float* __restrict__ mean,
                              const float* __restrict__ rstd, int R, int C, int rows_per, float eps) {
    __shared__ float red[32];
    float* pw = partial + (long long)blockIdx.x * 2 * C;  // this chunk's sums of dy * xhat
    float* pb = pw + C;                                   // ... and of dy
    for (int j = threadIdx.x; j < C; j += blockDim.x) pw[j] = pb[j] = 0.f;
    const int r0 = blockIdx.x * rows_per, r1 = min(R, r0 + rows_per);
    for (int r = r0; r < r1; r++) {
        const T* xr = x + (long long)r * C;
        const T* dyr = dy + (long long)r * C;
        float m, rs;
        if (mean) {
            m = mean[r];
            rs = rstd[r];
        } else {
            ln_stats(xr, C, eps, red, m, rs);
        }
        float sg = 0.f, sgx = 0.f;
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            const float d = qkv::to_float(dyr[j]), xh = (qkv::to_float(xr[j]) - m) * rs;
            const float g = weight ? d * qkv::to_float(weight[j]) : d;
            sg += g;
            sgx += g * xh;
            pw[j] += d * xh;
            pb[j] += d;
        }
        const float a = ln_block_sum(sg, red) / C, b = ln_block_sum(sgx, red) / C;
        T* dxr = dx + (long long)r * C;
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            const float d = qkv::to_float(dyr[j]), xh = (qkv::to_float(xr[j]) - m) * rs;
            const float g = weight ? d * qkv::to_float(weight[j]) : d;
            dxr[j] = qkv::from_float<T>(rs * (g - a - xh * b));
        }
    }
}

template <typename T>
__global__ void rmsnorm_rows(T* __restrict__ y, float* __restrict__ rstd_out, const T* __restrict__ x,
                             const T* __restrict__ weight, int R, int C, float eps) {
    __shared__ float red[32];
    const T* xr = x + (long long)blockIdx.x * C;
    T* yr = y + (long long)blockIdx.x * C;
    float ss = 0.f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        const float v = qkv::to_float(xr[j]);
        ss += v * v;
    }
    const float rstd = 1.f / sqrtf(ln_block_sum(ss, red) / C + eps);
    if (threadIdx.x == 0 && rstd_out) rstd_out[blockIdx.x] = rstd;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float t = qkv::to_float(xr[j]) * rstd;
        if (weight) t *= qkv::to_float(weight[j]);
        yr[j] = qkv::from_float<T>(t);
    }
}

template <typename T>
__global__ void rmsnorm_bwd(T* __restrict__ dx, float* __restrict__ partial, const T* __restrict__ dy,
                            const T* __restrict__ x, const T* __restrict__ weight, const float* __restrict__ rstd,
                            int R, int C, int rows_per, float eps) {
    __shared__ float red[32];
    float* pw = partial ? partial + (long long)blockIdx.x * C : nullptr;  // this chunk's sums of dy * xhat
    if (pw)
        for (int j = threadIdx.x; j < C; j += blockDim.x) pw[j] = 0.f;
    const int r0 = blockIdx.x * rows_per, r1 = min(R, r0 + rows_per);
    for (int r = r0; r < r1; r++) {
        const T* xr = x + (long long)r * C;
        const T* dyr = dy + (long long)r * C;
        float rs;
        if (rstd) {
            rs = rstd[r];
        } else {
            float ss = 0.f;
            for (int j = threadIdx.x; j < C; j += blockDim.x) {
                const float v = qkv::to_float(xr[j]);
                ss += v * v;
            }
            rs = 1.f / sqrtf(ln_block_sum(ss, red) / C + eps);
        }
        float sgx = 0.f;
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            const float d = qkv::to_float(dyr[j]), xh = qkv::to_float(xr[j]) * rs;
            sgx += (weight ? d * qkv::to_float(weight[j]) : d) * xh;
            if (pw) pw[j] += d * xh;
        }
        const float b = ln_block_sum(sgx, red) / C;
        T* dxr = dx + (long long)r * C;
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            const float d = qkv::to_float(dyr[j]), xh = qkv::to_float(xr[j]) * rs;
            const float g = weight ? d * qkv::to_float(weight[j]) : d;
            dxr[j] = qkv::from_float<T>(rs * (g - xh * b));
        }
    }
}
