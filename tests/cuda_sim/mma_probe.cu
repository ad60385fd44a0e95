// mma_probe.cu: one warp runs the two tensor-core patterns of attn_mma on fixed 16x16 tiles.
//
//   d_qk (16, 16) = A (16, 16) @ Bn^T, Bn (16 n, 16 k) row-major   (ldmatrix on K rows, S = Q K^T)
//   d_pv (16, 16) = A (16, 16) @ Bk,   Bk (16 k, 16 n) row-major   (ldmatrix.trans on V rows, O = P V)
//
// Compiled by the CPU harness (emulated ldmatrix / mma.sync) and, in test_cuda_gpu.py, by NVRTC
// for the real instructions: both must equal A @ B in NumPy, which pins the emulators' fragment
// layouts to the hardware's. Launch with one block of 32 threads.
#include "common.cuh"

template <typename T>
__global__ void mma_probe(const T* __restrict__ a, const T* __restrict__ bn, const T* __restrict__ bk,
                          float* __restrict__ d_qk, float* __restrict__ d_pv) {
    __shared__ __align__(16) T As[16 * 24], Bns[16 * 24], Bks[16 * 24];  // rows padded to 24 like the kernel
    const int lane = threadIdx.x, g = lane / 4, qd = lane % 4, j = lane / 8;
    for (int e = lane; e < 256; e += 32) {
        As[(e / 16) * 24 + e % 16] = a[e];
        Bns[(e / 16) * 24 + e % 16] = bn[e];
        Bks[(e / 16) * 24 + e % 16] = bk[e];
    }
    __syncwarp();
    unsigned af[4], r[4];
    qkv::ldsm_x4(af, As + ((j % 2) * 8 + lane % 8) * 24 + (j / 2) * 8);
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    qkv::ldsm_x4(r, Bns + ((j / 2) * 8 + lane % 8) * 24 + (j % 2) * 8);
    qkv::mma_16816<T>(s[0], af, r);
    qkv::mma_16816<T>(s[1], af, r + 2);
    float o[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    qkv::ldsm_x4_trans(r, Bks + ((j % 2) * 8 + lane % 8) * 24 + (j / 2) * 8);
    qkv::mma_16816<T>(o[0], af, r);
    qkv::mma_16816<T>(o[1], af, r + 2);
    for (int nb = 0; nb < 2; ++nb)
        for (int e = 0; e < 4; ++e) {
            int row = g + (e / 2) * 8, col = nb * 8 + 2 * qd + (e & 1);
            d_qk[row * 16 + col] = s[nb][e];
            d_pv[row * 16 + col] = o[nb][e];
        }
}
