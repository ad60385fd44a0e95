/*
fma_peak.c: this machine's float32 arithmetic peak at one of qkv's SIMD levels, so that qkv bench
can say what fraction of it a kernel reaches (qkv._cpu._runtime.fma_peak_gflops times it).

Every thread runs NCHAIN independent chains a = a*b + c, all in registers: enough chains to cover
the FMA latency on two ports, and nothing but FMAs in the loop. What a level's peak means:
- avx512: 24 chains of 512-bit FMAs (16 lanes, 24 of the 32 zmm registers);
- avx2:   12 chains of 256-bit FMAs (8 lanes, 12 of the 16 ymm registers);
- scalar: 12 chains of 128-bit multiply-then-add (4 lanes, what GCC makes of the baseline-ISA
          kernels: SSE2 on x86-64 has no FMA; the C standard mode keeps a*b + c unfused).
A step counts 2 flops a lane either way. b < 1 and c > 0: every chain converges to c / (1 - b) = 1,
never overflows nor goes denormal. Same SIMD scheme as the kernels (qkv_common.h): each level is
compiled under its `#pragma GCC target` and picked at run time from `simd` (capped here by what the
CPU supports, so a wrong request cannot raise SIGILL).
*/
#include "qkv_common.h"
#include "fma_peak.h"

// fma_chains_<ISA>(n_steps, sink): n_steps steps of NCHAIN chains of W lanes; returns the flops done
// and adds one lane of every chain to *sink, so that the compiler keeps them all.
#define FMA_CHAINS(ISA, V, W, NCHAIN, VSET1, VFMA)                                  \
    static double fma_chains_##ISA(int64_t n_steps, float* sink) {                  \
        V a[NCHAIN];                                                                \
        const V b = VSET1(0.9999999f), c = VSET1(1e-7f);                            \
        for (int i = 0; i < NCHAIN; i++) a[i] = VSET1(0.01f * (float)i);            \
        for (int64_t t = 0; t < n_steps; t++) {                                     \
            _Pragma("GCC unroll 32")                                                \
            for (int i = 0; i < NCHAIN; i++) a[i] = VFMA(a[i], b, c);               \
        }                                                                           \
        float s = 0;                                                                \
        for (int i = 0; i < NCHAIN; i++) s += a[i][0];                              \
        *sink += s;                                                                 \
        return 2.0 * W * NCHAIN * (double)n_steps;                                  \
    }

// scalar: GCC's generic 16-byte vectors (any architecture)
typedef float qkv_v4f __attribute__((vector_size(16)));
#define V4_SET1(x) ((qkv_v4f){(x), (x), (x), (x)})
#define V4_MULADD(a, b, c) ((a) * (b) + (c))
FMA_CHAINS(scalar, qkv_v4f, 4, 12, V4_SET1, V4_MULADD)

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define QKV_FMA_HAVE_X86 1
#include <immintrin.h>
QKV_BEGIN_AVX2
FMA_CHAINS(avx2, __m256, 8, 12, _mm256_set1_ps, _mm256_fmadd_ps)
QKV_END_TARGET
QKV_BEGIN_AVX512
FMA_CHAINS(avx512, __m512, 16, 24, _mm512_set1_ps, _mm512_fmadd_ps)
QKV_END_TARGET
#endif

// Runs the chains of level `simd` for n_steps steps on each of n_threads threads (one without
// OpenMP); returns the flops done by all threads together. The caller times the call.
double qkv_fma_chains(int simd, int n_threads, int64_t n_steps, float* sink) {
    const int cpu = qkv_cpu_simd_level();
    if (simd > cpu) simd = cpu;
    double (*chains)(int64_t, float*) = fma_chains_scalar;
#ifdef QKV_FMA_HAVE_X86
    if (simd >= QKV_SIMD_AVX512) chains = fma_chains_avx512;
    else if (simd == QKV_SIMD_AVX2) chains = fma_chains_avx2;
#endif
    if (n_threads < 1) n_threads = 1;
    if (n_steps < 0) n_steps = 0;
    double flops = 0;
    float s = 0;
    QKV_OMP(parallel num_threads(n_threads) reduction(+ : flops, s))
    flops += chains(n_steps, &s);
    *sink = s;
    return flops;
}
