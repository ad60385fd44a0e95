// activation.cu: the GEMM epilogue, y = act(x + bias) elementwise; also standalone GELU.
//
// x, y (R, N) contiguous rows (y may alias x: linear runs it in place on the cuBLAS output);
// bias (N,) or null. act: 0 none, 1 GELU tanh (GPT-2), 2 GELU erf (BERT), 3 ReLU (NaN stays NaN).
// GELU tanh is evaluated as x * sigmoid(2u), which has no cancellation for x < 0. fp32 math, no
// fast-math intrinsics. Grid-stride loop over R*N elements.
#include "common.cuh"

__device__ __forceinline__ float qkv_act(float t, int act) {
    if (act == 1) {
        float u = 0.7978845608028654f * (t + 0.044715f * t * t * t);
        return t / (1.f + expf(-2.f * u));
    }
    if (act == 2) return 0.5f * t * erfcf(-t * 0.7071067811865476f);
    if (act == 3) return t > 0.f || t != t ? t : 0.f;
    return t;
}

template <typename T>
__global__ void bias_act(T* y, const T* x, const T* __restrict__ bias, long long total, int N, int act) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
        float t = qkv::to_float(x[e]);
        if (bias) t += qkv::to_float(bias[e % N]);
        y[e] = qkv::from_float<T>(qkv_act(t, act));
    }
}
