// softmax.cu: masked, scaled softmax over the last axis, one CTA per row.
//
//   y[r, :] = softmax(scale * x[r, :] (+ additive mask), masked -> exactly 0)
//
// x, y (R, N) contiguous rows. Row r is query i = r % M of its (M, N) score matrix, which is what
// the causal modes need (causal_off = N - M bottom-right, 0 top-left: key j visible if j <= i + off).
// The mask (mask_kind 1: uint8/bool, nonzero = keep; 2: additive, dtype T) is read at
// mask[row_off[r] + j * mask_sk], so any broadcast of a mask costs no copy. A row with nothing
// visible is all zeros; a row whose max overflowed to +inf puts equal mass on its +inf scores.
// Three passes over the row (max, sum, write); fp32 throughout, no fast math.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ float softmax_score(const T* x, int j, float scale, const void* mask, int mask_kind,
                                               long long moff, long long msk, int vis_end) {
    if (j >= vis_end) return qkv::neg_inf();
    float s = qkv::to_float(x[j]) * scale;
    if (mask_kind == 1) return static_cast<const unsigned char*>(mask)[moff + j * msk] ? s : qkv::neg_inf();
    if (mask_kind == 2) {
        float a = qkv::to_float(static_cast<const T*>(mask)[moff + j * msk]);
        return a == qkv::neg_inf() ? a : s + a;
    }
    return s;
}

__device__ __forceinline__ float softmax_weight(float s, float m_use, bool inf_row) {
    if (inf_row) return s == -qkv::neg_inf() ? 1.f : (s != s ? s : 0.f);
    return expf(s - m_use);
}

// block-wide reduction through shared memory (blockDim.x a multiple of 32, <= 1024)
template <bool IS_MAX>
__device__ __forceinline__ float block_reduce(float v, float* red) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    v = IS_MAX ? qkv::warp_max(v) : qkv::warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = lane < nw ? red[lane] : (IS_MAX ? qkv::neg_inf() : 0.f);
    r = IS_MAX ? qkv::warp_max(r) : qkv::warp_sum(r);
    __syncthreads();                               // red[] is reused by the next reduction
    return r;
}

template <typename T>
__global__ void softmax_rows(T* __restrict__ y, const T* __restrict__ x, int R, int N, int M, float scale,
                             const void* __restrict__ mask, int mask_kind, const long long* __restrict__ row_off,
                             long long msk, int causal, int causal_off) {
    __shared__ float red[32];
    const int r = blockIdx.x;
    const T* xr = x + (long long)r * N;
    T* yr = y + (long long)r * N;
    const long long moff = mask_kind ? row_off[r] : 0;
    int vis_end = N;
    if (causal) {
        long long e = (long long)(r % M) + causal_off + 1;
        vis_end = e < 0 ? 0 : (e < N ? (int)e : N);
    }
    float m = qkv::neg_inf();
    for (int j = threadIdx.x; j < N; j += blockDim.x)
        m = fmaxf(m, softmax_score(xr, j, scale, mask, mask_kind, moff, msk, vis_end));
    m = block_reduce<true>(m, red);
    const float m_use = m == qkv::neg_inf() ? 0.f : m;
    // A +inf score (a finite input that overflowed after scaling) takes the limit: equal mass on
    // the +inf scores, 0 elsewhere; a NaN anywhere in the row still makes the row NaN.
    const bool inf_row = m == -qkv::neg_inf();
    float l = 0.f;
    for (int j = threadIdx.x; j < N; j += blockDim.x) {
        float s = softmax_score(xr, j, scale, mask, mask_kind, moff, msk, vis_end);
        if (s != qkv::neg_inf()) l += softmax_weight(s, m_use, inf_row);
    }
    l = block_reduce<false>(l, red);
    const float inv = m == qkv::neg_inf() ? 0.f : 1.f / l;
    for (int j = threadIdx.x; j < N; j += blockDim.x) {
        float s = softmax_score(xr, j, scale, mask, mask_kind, moff, msk, vis_end);
        yr[j] = qkv::from_float<T>(s == qkv::neg_inf() ? 0.f : softmax_weight(s, m_use, inf_row) * inv);
    }
}
