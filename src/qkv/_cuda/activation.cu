// activation.cu: the GEMM epilogue, y = act(x + bias) elementwise; also standalone GELU.
//
// x, y (R, N) contiguous rows (y may alias x: linear runs it in place on the cuBLAS output);
// bias (N,) or null. act: 0 none, 1 GELU tanh (GPT-2), 2 GELU erf (BERT), 3 ReLU (NaN stays NaN).
// GELU tanh is evaluated as x * sigmoid(2u), which has no cancellation for x < 0. fp32 math, no
// fast-math intrinsics. Grid-stride loop over R*N elements.
//
// Backward: act_bwd, dx = dy * act'(x) elementwise (qkv.gelu_backward); act_bwd_cols, the first
// pass of qkv.linear_backward: g = dy * act'(pre) (written when g is not null) and, per chunk of
// rows_per rows, the column sums of g into partial[chunk] (fp32, N): one thread per column walks
// the chunk's rows, coalesced along the row, no atomics; sum_partials (common.cuh) adds the chunks
// in order. act'(x): GELU tanh s + x s (1 - s) 2u' with s = sigmoid(2u), 1 - s = 1 / (1 + 1/e),
// e = exp(-2u); GELU erf Phi(x) + x phi(x); x clamped to +-1e4 in the second term, where it is
// exactly 0, so x^3 * 0 never becomes inf * 0. ReLU passes dy where x > 0, 0 where x <= 0, NaN.
//
// SwiGLU (swiglu, swiglu_bwd; Llama's gated MLP): y = silu(gate) * up, silu(g) = g / (1 + e^-g),
// y (R, N) contiguous, gate / up rows ldg / ldu elements apart (the two halves of the linear's
// [gate | up] GEMM output, read once); backward dgate = dy up s (1 + g (1 - s)), dup = dy g s, with
// s = 1/(1 + e), 1 - s = 1/(1 + 1/e), e = e^-g, g clamped to +-1e4 in g (1 - s) (exactly 0 there).
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

// dy * act'(t)
__device__ __forceinline__ float qkv_act_bwd(float d, float t, int act) {
    const float tc = fminf(fmaxf(t, -1e4f), 1e4f);
    if (act == 1) {
        const float a = 0.7978845608028654f, c = 0.044715f;
        const float e = expf(-2.f * a * (t + c * t * t * t));
        const float s = 1.f / (1.f + e), sm = 1.f / (1.f + 1.f / e);
        return d * (s + 2.f * a * tc * (1.f + 3.f * c * tc * tc) * s * sm);
    }
    if (act == 2) return d * (0.5f * erfcf(-t * 0.7071067811865476f) + tc * expf(-0.5f * tc * tc) * 0.3989422804014327f);
    if (act == 3) return t > 0.f ? d : (t != t ? t : 0.f);
    return d;
}

template <typename T>
__global__ void act_bwd(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x, long long total, int act) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x)
        dx[e] = qkv::from_float<T>(qkv_act_bwd(qkv::to_float(dy[e]), qkv::to_float(x[e]), act));
}

// grid (n_chunks, ceil(N / blockDim.x)); pre may be null for act 0, g null when only sums are wanted
template <typename T>
__global__ void act_bwd_cols(T* __restrict__ g, float* __restrict__ partial, const T* __restrict__ dy,
                             const T* __restrict__ pre, int R, int N, int rows_per, int act) {
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= N) return;
    const int r0 = blockIdx.x * rows_per, r1 = min(R, r0 + rows_per);
    float s = 0.f;
    for (int r = r0; r < r1; r++) {
        const long long e = (long long)r * N + j;
        const float v = qkv_act_bwd(qkv::to_float(dy[e]), pre ? qkv::to_float(pre[e]) : 0.f, act);
        if (g) g[e] = qkv::from_float<T>(v);
        s += v;
    }
    partial[(long long)blockIdx.x * N + j] = s;
}

template <typename T>
__global__ void swiglu(T* __restrict__ y, const T* __restrict__ gate, const T* __restrict__ up, long long total, int N,
                       long long ldg, long long ldu) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
        const long long r = e / N, j = e % N;
        const float g = qkv::to_float(gate[r * ldg + j]), u = qkv::to_float(up[r * ldu + j]);
        y[e] = qkv::from_float<T>(g / (1.f + expf(-g)) * u);
    }
}

template <typename T>
__global__ void swiglu_bwd(T* __restrict__ dgate, T* __restrict__ dup, const T* __restrict__ dy,
                           const T* __restrict__ gate, const T* __restrict__ up, long long total) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
        const float d = qkv::to_float(dy[e]), g = qkv::to_float(gate[e]), u = qkv::to_float(up[e]);
        const float ex = expf(-g);
        const float s = 1.f / (1.f + ex), sm = 1.f / (1.f + 1.f / ex);
        const float gc = fminf(fmaxf(g, -1e4f), 1e4f);
        dgate[e] = qkv::from_float<T>(d * u * (s * (1.f + gc * sm)));
        dup[e] = qkv::from_float<T>(d * (g * s));
    }
}
