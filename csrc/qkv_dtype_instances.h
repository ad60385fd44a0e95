/*
qkv_dtype_instances.h: compile a kernel file's row functions for float and double, each once per
ISA (qkv_isa_instances.h), in one place.

    #define QKV_INC "softmax.inc"      // the row functions, named with QKV_CAT(..., SFX/ISA)
    #include "qkv_dtype_instances.h"

defines, for each dtype in turn, T, SFX (f32/f64), EXP (qkv_expf/qkv_exp, from qkv_math.h), SQRT
(sqrtf/sqrt, from math.h) and NEG_INF, includes qkv_isa_instances.h, and undefines them again. No include guard: a file may include it once per
QKV_INC.
*/
#define T float
#define SFX f32
#define EXP qkv_expf
#define SQRT sqrtf
#define NEG_INF qkv_neg_inf_f()
#include "qkv_isa_instances.h"
#undef T
#undef SFX
#undef EXP
#undef SQRT
#undef NEG_INF

#define T double
#define SFX f64
#define EXP qkv_exp
#define SQRT sqrt
#define NEG_INF qkv_neg_inf_d()
#include "qkv_isa_instances.h"
#undef T
#undef SFX
#undef EXP
#undef SQRT
#undef NEG_INF
