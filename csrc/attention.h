// attention.h: fused scaled dot-product attention (FlashAttention-style online softmax). See attention.c.
#ifndef QKV_ATTENTION_H
#define QKV_ATTENTION_H
#include <stdint.h>

// mask_kind and causal codes: the same numbers as softmax.h (Python passes one set of constants)
#define QKV_ATTN_MASK_NONE 0
#define QKV_ATTN_MASK_BOOL 1  // uint8, nonzero = attend
#define QKV_ATTN_MASK_ADD 2   // same dtype as q, added to the scaled scores; -inf = masked
#define QKV_ATTN_CAUSAL_NONE 0
#define QKV_ATTN_CAUSAL_BOTTOM_RIGHT 1  // query i sees keys j <= i + Lk - Lq (with kv_lengths: + kv_lengths[b] - Lq)
#define QKV_ATTN_CAUSAL_TOP_LEFT 2      // query i sees keys j <= i

// kernel choice (the `path` argument): auto picks the fastest valid one; the others force a path
// (tests and benchmarks), falling back to plain where the forced path cannot run the shapes.
#define QKV_ATTN_PATH_AUTO 0
#define QKV_ATTN_PATH_PLAIN 1
#define QKV_ATTN_PATH_TILED 2
#define QKV_ATTN_PATH_SPLITK 3

// shape  = {B, Hq, Hkv, Lq, Lk, D, Dv}
// stride = element strides of axes 0..2 of q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv):
//          {qb, qh, ql, kb, kh, kl, vb, vh, vl}; the last axis of each is contiguous.
// out     (B, Hq, Lq, Dv) contiguous
// lse     (B, Hq, Lq) contiguous, or NULL
// weights (B, Hq, Lq, Lk) contiguous, or NULL (materialised attention pattern)
// mask: row r = (b*Hq + h)*Lq + i of the broadcast (B, Hq, Lq, Lk) mask starts at mask + mask_row_off[r]
//       (elements), columns contiguous. kv_lengths (B,) or NULL.
int qkv_attention_f32(float* out, float* lse, float* weights, const float* q, const float* k, const float* v,
                      const void* mask, int mask_kind, const int64_t* mask_row_off, const int64_t* kv_lengths,
                      const int64_t* shape, const int64_t* stride, int causal, float scale, int path, int simd,
                      int n_threads);
int qkv_attention_f64(double* out, double* lse, double* weights, const double* q, const double* k,
                      const double* v, const void* mask, int mask_kind, const int64_t* mask_row_off,
                      const int64_t* kv_lengths, const int64_t* shape, const int64_t* stride, int causal,
                      double scale, int path, int simd, int n_threads);

// which path `path` resolves to for these arguments (for `qkv info` and the benchmarks)
int qkv_attention_path(int is_f32, const int64_t* shape, int has_weights, int path, int simd, int n_threads);

// The backward (FlashAttention-2): dq (B, Hq, Lq, D), dk (B, Hkv, Lk, D), dv (B, Hkv, Lk, Dv) contiguous
// outputs; dout and out (B, Hq, Lq, Dv) and lse (B, Hq, Lq) contiguous; q, k, v, mask, kv_lengths,
// shape, stride, causal and scale as for the forward. path: auto, plain or tiled (split-K is plain).
int qkv_attention_backward_f32(float* dq, float* dk, float* dv, const float* dout, const float* q,
                               const float* k, const float* v, const float* out, const float* lse,
                               const void* mask, int mask_kind, const int64_t* mask_row_off,
                               const int64_t* kv_lengths, const int64_t* shape, const int64_t* stride,
                               int causal, float scale, int path, int simd, int n_threads);
int qkv_attention_backward_f64(double* dq, double* dk, double* dv, const double* dout, const double* q,
                               const double* k, const double* v, const double* out, const double* lse,
                               const void* mask, int mask_kind, const int64_t* mask_row_off,
                               const int64_t* kv_lengths, const int64_t* shape, const int64_t* stride,
                               int causal, double scale, int path, int simd, int n_threads);
int qkv_attention_backward_path(int is_f32, const int64_t* shape, int path, int simd);
#endif
