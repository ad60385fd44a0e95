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

// ---------------------------------------------------------------------------------------------
// softmax_bwd: dx = scale * y * (dy - sum(dy * y)) per row, one CTA per row, from y (R, N). Where
// y == 0 (masked) dx is exactly 0 and dy is not read into the sum (NaN/Inf there change nothing).
template <typename T>
__global__ void softmax_bwd(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ y, int R, int N,
                            float scale) {
    __shared__ float red[32];
    const long long off = (long long)blockIdx.x * N;
    float s = 0.f;
    for (int j = threadIdx.x; j < N; j += blockDim.x) {
        const float p = qkv::to_float(y[off + j]);
        if (p != 0.f) s += qkv::to_float(dy[off + j]) * p;
    }
    s = block_reduce<false>(s, red);
    for (int j = threadIdx.x; j < N; j += blockDim.x) {
        const float p = qkv::to_float(y[off + j]);
        dx[off + j] = qkv::from_float<T>(p != 0.f ? scale * p * (qkv::to_float(dy[off + j]) - s) : 0.f);
    }
}

// ---------------------------------------------------------------------------------------------
// cross_entropy_rows: the fused cross-entropy, one CTA per row of logits x (R, V).
//   loss[r] = logsumexp(x[r]) - x[r, t] (+inf if x[r, t] = -inf; NaN if the row holds NaN or +inf;
//             0 if t == ignore_index)
//   dx[r]   = (softmax(x[r]) - onehot(t)) * gscale (zeros on an ignored row; NaN on a NaN row)
// One sweep reads the row for an online max / sum per thread (the sum rescaled by exp(m_old -
// m_new) when the thread's max grows), two block reductions combine the threads, and a second
// sweep writes dx, the one-hot subtraction folded in by the thread that owns column t. No (R, V)
// buffer besides dx; dx may be null (loss only). losses (R,) fp32; the caller sums them.
template <typename T>
__global__ void cross_entropy_rows(T* __restrict__ dx, float* __restrict__ losses, const T* __restrict__ x,
                                   const long long* __restrict__ targets, int V, long long ignore_index,
                                   float gscale) {
    __shared__ float red[32];
    const long long off = (long long)blockIdx.x * V;
    const long long t = targets[blockIdx.x];
    if (t == ignore_index) {  // uniform over the CTA
        if (threadIdx.x == 0) losses[blockIdx.x] = 0.f;
        if (dx)
            for (int j = threadIdx.x; j < V; j += blockDim.x) dx[off + j] = qkv::from_float<T>(0.f);
        return;
    }
    const float ninf = qkv::neg_inf();
    float m = ninf, s = 0.f, bad = 0.f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float v = qkv::to_float(x[off + j]);
        if (v != v || v == -ninf) bad = 1.f;
        if (v > m) {
            s = s * expf(m - v) + 1.f;  // expf(-inf) = 0 on the first visible score
            m = v;
        } else if (v != ninf) {
            s += expf(v - m);
        }
    }
    bad = block_reduce<true>(bad, red);
    const float M = block_reduce<true>(m, red);
    s = block_reduce<false>(m == ninf ? 0.f : s * expf(m - M), red);
    const float xt = qkv::to_float(x[off + t]);
    if (threadIdx.x == 0)
        losses[blockIdx.x] = bad != 0.f ? __int_as_float(0x7fc00000) : (xt == ninf ? -ninf : (M - xt) + logf(s));
    if (!dx) return;
    const float inv = gscale / s;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float p = M == ninf ? 0.f : expf(qkv::to_float(x[off + j]) - M) * inv;
        if (j == t) p -= gscale;
        dx[off + j] = qkv::from_float<T>(bad != 0.f ? __int_as_float(0x7fc00000) : p);
    }
}
