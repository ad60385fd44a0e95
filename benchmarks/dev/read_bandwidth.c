/*
read_bandwidth.c: this machine's read bandwidth, the roofline of decode (one query reading the whole
K/V cache) in benchmarks/attention_cpu.py. Built and loaded through ctypes by benchmarks/dev/_build.py.
(The FMA peak, the roofline of the compute-bound rows, ships with qkv: csrc/fma_peak.c.)
*/
#include <omp.h>
#include <stdlib.h>

// Read bandwidth in GB/s: `n_threads` threads sum a buffer of `bytes` (allocated and touched here),
// best of `reps` passes. With bytes ~ the K/V cache of a decode step it is that step's roofline.
// Baseline ISA (GCC splits the 64-byte vectors): loads at any SIMD width outrun memory, and it runs
// on every x86-64.
static float sum_floats(const float* x, long n) {
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
            sink += sum_floats(x + lo, hi - lo);
        }
        t = omp_get_wtime() - t;
        if (t < best) best = t;
    }
    free(x);
    return sink == 12345.0f ? 0 : (double)n * 4 / best / 1e9;
}
