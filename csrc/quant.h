// quant.h: qkv.linear with low-precision weights (bfloat16, and 8-bit blocks in llama.cpp's Q8_0
// layout: 32 int8 values + one float16 scale). See quant.c.
#ifndef QKV_QUANT_H
#define QKV_QUANT_H
#include <stdint.h>

#define QKV_Q8_BLOCK 32

// y (M, N) = x (M, K) @ W (K, N), W stored as N rows of K bfloat16 values (the (out, in) layout)
int qkv_qlinear_bf16(float* y, const float* x, const uint16_t* w, int64_t M, int64_t K, int64_t N, int simd,
                     int n_threads);
// the same with W stored as N rows of Kp = ceil(K / 32) * 32 int8 values q (zero padded) and
// Kp / 32 float16 scales s per row (bit patterns): W[k, n] = s[n, k / 32] * q[n, k]
int qkv_qlinear_q8(float* y, const float* x, const int8_t* q, const uint16_t* s, int64_t M, int64_t K, int64_t N,
                   int simd, int n_threads);
// out (R, K) float32 = R stored rows dequantised (the GEMM path converts a panel of W this way)
int qkv_dequant_bf16(float* out, const uint16_t* w, int64_t R, int64_t K, int simd, int n_threads);
int qkv_dequant_q8(float* out, const int8_t* q, const uint16_t* s, int64_t R, int64_t K, int simd, int n_threads);
#endif
