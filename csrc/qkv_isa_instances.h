/*
qkv_isa_instances.h: compile a kernel file's row functions once per ISA, in one place.

    #define QKV_INC "softmax.inc"      // the row functions, named with QKV_CAT(..., ISA)
    #define T float ...                // the dtype macros the .inc needs
    #include "qkv_isa_instances.h"

includes QKV_INC three times, with ISA = scalar (the baseline ISA), avx2 and avx512; the last two
inside QKV_BEGIN_AVX2 / QKV_BEGIN_AVX512 ... QKV_END_TARGET, so GCC compiles and vectorises them
for that ISA. The driver then picks one at run time from its `simd` argument. No include guard:
it is included once per dtype.
*/
#define ISA scalar
#include QKV_INC
#undef ISA
QKV_BEGIN_AVX2
#define ISA avx2
#include QKV_INC
#undef ISA
QKV_END_TARGET
QKV_BEGIN_AVX512
#define ISA avx512
#include QKV_INC
#undef ISA
QKV_END_TARGET
