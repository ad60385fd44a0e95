/*
fma_peak.c: this machine's float32 FMA peak, for rooflines in the attention benchmarks.

Each thread runs 24 independent chains of AVX-512 (or AVX2) FMAs, enough to cover the FMA latency
on two ports; the result is 2 flops x lanes x FMAs / second over all threads. Built and loaded
through ctypes by benchmarks/dev/_build.py.
*/
#include <omp.h>

__attribute__((target("avx512f"))) static float chains512(long n) {
    typedef float v16 __attribute__((vector_size(64)));
    v16 a[24], b, c;
    for (int i = 0; i < 16; i++) b[i] = 1.0000001f, c[i] = 1e-7f;
    for (int i = 0; i < 24; i++) a[i] = b * (float)i;
    for (long t = 0; t < n; t++) {
#pragma GCC unroll 24
        for (int i = 0; i < 24; i++) a[i] = __builtin_ia32_vfmaddps512_mask(a[i], b, c, -1, 4);
    }
    float s = 0;
    for (int i = 0; i < 24; i++) s += a[i][0];
    return s;
}

__attribute__((target("avx2,fma"))) static float chains256(long n) {
    typedef float v8 __attribute__((vector_size(32)));
    v8 a[12], b, c;
    for (int i = 0; i < 8; i++) b[i] = 1.0000001f, c[i] = 1e-7f;
    for (int i = 0; i < 12; i++) a[i] = b * (float)i;
    for (long t = 0; t < n; t++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = __builtin_ia32_vfmaddps256(a[i], b, c);
    }
    float s = 0;
    for (int i = 0; i < 12; i++) s += a[i][0];
    return s;
}

// GFLOP/s of `n_threads` threads each running n iterations (avx512 != 0: 512-bit FMAs)
double fma_peak_gflops(int n_threads, long n, int avx512) {
    double t = omp_get_wtime();
    float sink = 0;
#pragma omp parallel num_threads(n_threads) reduction(+ : sink)
    sink += avx512 ? chains512(n) : chains256(n);
    t = omp_get_wtime() - t;
    const double flops = 2.0 * (avx512 ? 16 * 24 : 8 * 12) * (double)n * n_threads;
    return sink == 12345.0f ? 0 : flops / t / 1e9;
}

// Read bandwidth in GB/s: `n_threads` threads sum a buffer of `bytes` (allocated and touched here),
// best of `reps` passes. With bytes ~ the K/V cache of a decode step it is that step's roofline.
#include <stdlib.h>
__attribute__((target("avx512f"))) static float sum512(const float* x, long n) {
    typedef float v16 __attribute__((vector_size(64)));
    v16 a = {0}, b = {0}, c = {0}, d = {0};
    for (long i = 0; i + 64 <= n; i += 64) {
        a += *(const v16*)(x + i);
        b += *(const v16*)(x + i + 16);
        c += *(const v16*)(x + i + 32);
        d += *(const v16*)(x + i + 48);
    }
    a += b + c + d;
    float s = 0;
    for (int i = 0; i < 16; i++) s += a[i];
    return s;
}

double read_bandwidth_gbs(int n_threads, long bytes, int reps) {
    const long n = bytes / 4 / 64 * 64;
    float* x = aligned_alloc(64, (size_t)n * 4);
    if (!x) return 0;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (long i = 0; i < n; i++) x[i] = 1e-9f;
    double best = 1e30;
    float sink = 0;
    for (int r = 0; r < reps; r++) {
        double t = omp_get_wtime();
#pragma omp parallel num_threads(n_threads) reduction(+ : sink)
        {
            const int id = omp_get_thread_num(), nt = omp_get_num_threads();
            const long chunk = n / nt / 64 * 64, lo = id * chunk, hi = id == nt - 1 ? n : lo + chunk;
            sink += sum512(x + lo, hi - lo);
        }
        t = omp_get_wtime() - t;
        if (t < best) best = t;
    }
    free(x);
    return sink == 12345.0f ? 0 : (double)n * 4 / best / 1e9;
}
