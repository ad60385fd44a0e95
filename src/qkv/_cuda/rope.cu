// rope.cu: rotary position embeddings, Hugging Face Llama's rotate-half, one CTA per token.
//
//   out[i]        = x[i] cos a - x[i + D/2] sin a
//   out[i + D/2]  = x[i + D/2] cos a + x[i] sin a,       a = pos * inv_freq[i], i < D/2
//
// x, out (B, L, H, D) at element strides (xs0, xs1, xs2) / (os0, os1, os2) with a contiguous last
// axis (q, k sliced from a fused projection; out may be x: in place, each thread reads its pair
// before it writes it and no other thread touches the pair). pos (B, L) int64 at strides
// (ps0, ps1) (ps0 = 0: one row shared by the batch). inv_freq (D/2,) float64 from
// qkv._rope.inv_freq, the one place the frequencies (and Llama 3's scaling) are decided.
// inverse rotates by -a (the backward).
//
// The angle is formed in double and reduced to turns there (a / 2 pi minus the nearest integer,
// exact for any position), so only the final [-pi, pi] angle is fp32: |error| ~ 2e-7 rad whatever
// the position, where fp32 angles (HF's) lose ~ pos * 6e-8. sincospif of that (no Payne-Hanek
// slow path, so no local memory) for the D/2 angles of the token go to shared memory, then the
// CTA rotates every head of the token. D <= 2 * ROPE_MAX_HALF.
#include "common.cuh"

#ifdef QKV_CPU_SIM  // the CPU harness has no CUDA math library: sin(pi x), cos(pi x) in double
inline void sincospif(float x, float* s, float* c) {
    const double a = 3.14159265358979323846 * (double)x;
    *s = (float)std::sin(a);
    *c = (float)std::cos(a);
}
#endif

#define ROPE_MAX_HALF 256

template <typename T>
__global__ void rope_rows(T* out, const T* x, const long long* __restrict__ pos, const double* __restrict__ inv_freq,
                          int L, int H, int D, long long xs0, long long xs1, long long xs2, long long os0,
                          long long os1, long long os2, long long ps0, long long ps1, int inverse) {
    __shared__ float cs[ROPE_MAX_HALF], sn[ROPE_MAX_HALF];
    const int b = blockIdx.x / L, l = blockIdx.x % L, h2 = D / 2;
    const double p = (double)pos[b * ps0 + l * ps1];
    for (int i = threadIdx.x; i < h2; i += blockDim.x) {
        double turns = p * inv_freq[i] * 0.15915494309189535;  // a / (2 pi)
        turns -= rint(turns);                                   // in [-1/2, 1/2]
        float s, c;
        sincospif((float)(2.0 * turns), &s, &c);                // sin, cos of pi * [-1, 1]: no slow path
        cs[i] = c;
        sn[i] = inverse ? -s : s;
    }
    __syncthreads();
    const T* xt = x + b * xs0 + l * xs1;
    T* ot = out + b * os0 + l * os1;
    for (int e = threadIdx.x; e < H * h2; e += blockDim.x) {
        const int h = e / h2, i = e % h2;
        const float x1 = qkv::to_float(xt[h * xs2 + i]), x2 = qkv::to_float(xt[h * xs2 + i + h2]);
        ot[h * os2 + i] = qkv::from_float<T>(x1 * cs[i] - x2 * sn[i]);
        ot[h * os2 + i + h2] = qkv::from_float<T>(x2 * cs[i] + x1 * sn[i]);
    }
}
