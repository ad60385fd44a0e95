// fma_peak.h: this machine's float32 arithmetic peak at one of qkv's SIMD levels. See fma_peak.c.
#ifndef QKV_FMA_PEAK_H
#define QKV_FMA_PEAK_H
#include <stdint.h>

double qkv_fma_chains(int simd, int n_threads, int64_t n_steps, float* sink);
#endif
