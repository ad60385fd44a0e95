// common.cuh: what every qkv CUDA kernel file shares.
//
// - T <-> float conversions for float, __half and __nv_bfloat16 (kernels accumulate in float);
// - -inf without the INFINITY macro (NVRTC does not define it);
// - warp reductions;
// - the three inline-PTX instructions the attention kernel uses (cp.async, ldmatrix, mma.sync),
//   each behind a small qkv:: function. Under QKV_CPU_SIM (the CPU test harness in tests/cuda_sim)
//   the harness provides emulated versions of exactly these functions, so the real kernels run on
//   the CPU; everywhere else they are one PTX instruction each.
//
// The loader inlines this file in place of `#include "common.cuh"` before handing a kernel file to
// NVRTC, so CuPy's kernel cache sees header changes.
#pragma once
#ifndef QKV_CPU_SIM
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

namespace qkv {

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// two floats -> one 32-bit register holding two 16-bit values (low half = lo), as mma.sync wants
template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<__half>(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
}
template <> __device__ __forceinline__ unsigned pack2<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
}

// the exponent field of a 16-bit float: all ones means Inf or NaN
template <typename T> __device__ __forceinline__ unsigned short exponent_bits();
template <> __device__ __forceinline__ unsigned short exponent_bits<__half>() { return 0x7C00; }
template <> __device__ __forceinline__ unsigned short exponent_bits<__nv_bfloat16>() { return 0x7F80; }

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// max that lets NaN through (fmaxf drops it): a NaN score must poison its row, as in the oracle
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

#ifndef QKV_CPU_SIM
// cp.async: copy 16 bytes global -> shared without staging in registers; zero-fill when !valid.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// ldmatrix.x4: four 8x8 16-bit matrices; lane l gives the address of row (l % 8) of matrix l / 8.
__device__ __forceinline__ void ldsm_x4(unsigned* r, const void* p) {
    unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, const void* p) {
    unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}

// mma.sync m16n8k16, A row-major, B col-major, fp32 accumulate in place: d += a * b.
template <typename T> __device__ __forceinline__ void mma_16816(float* d, const unsigned* a, const unsigned* b);
template <> __device__ __forceinline__ void mma_16816<__half>(float* d, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void mma_16816<__nv_bfloat16>(float* d, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

}  // namespace qkv

// Dynamically sized shared memory (the launcher sets the size): one declaration per kernel.
#ifndef QKV_CPU_SIM
#define QKV_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// sum_partials: out[j] = sum over c = 0 .. n_chunks-1, in that order, of partial[c * stride + j],
// j < N, one thread per column. The fixed-order second stage of the backward kernels' row
// reductions (layer norm dweight/dbias, linear dbias): chunks of rows first sum into their own
// partial rows, then this adds the chunks, so no atomics and the same bits on every run.
template <typename T>
__global__ void sum_partials(T* __restrict__ out, const float* __restrict__ partial, int n_chunks, long long stride,
                             int N) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= N) return;
    float s = 0.f;
    for (int c = 0; c < n_chunks; c++) s += partial[c * stride + j];
    out[j] = qkv::from_float<T>(s);
}
