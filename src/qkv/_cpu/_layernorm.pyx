# Cython wrapper of csrc/layernorm.c. Shapes are checked by the caller (qkv._cpu.layer_norm).
from cython cimport floating
from libc.stdint cimport int64_t

cdef extern from "layernorm.h" nogil:
    int qkv_layernorm_f32(float* out, const float* x, const float* weight, const float* bias, int64_t R,
                          int64_t C, float eps, int simd, int n_threads)
    int qkv_layernorm_f64(double* out, const double* x, const double* weight, const double* bias, int64_t R,
                          int64_t C, double eps, int simd, int n_threads)


def layernorm_rows(floating[:, ::1] out,       # OUT (R, C)
                   const floating[:, ::1] x,   # IN  (R, C)
                   const floating[::1] weight, # IN  (C,) or None
                   const floating[::1] bias,   # IN  (C,) or None
                   double eps, int simd, int n_threads):
    cdef int64_t R = x.shape[0], C = x.shape[1]
    cdef const floating* wp = NULL
    cdef const floating* bp = NULL
    cdef int status
    if out.shape[0] != R or out.shape[1] != C:
        raise ValueError("layernorm_rows: out shape mismatch")
    if weight is not None:
        if weight.shape[0] != C:
            raise ValueError("layernorm_rows: weight length mismatch")
        wp = &weight[0]
    if bias is not None:
        if bias.shape[0] != C:
            raise ValueError("layernorm_rows: bias length mismatch")
        bp = &bias[0]
    if R == 0:
        return
    with nogil:
        if floating is float:
            status = qkv_layernorm_f32(&out[0, 0], &x[0, 0], wp, bp, R, C, <float>eps, simd, n_threads)
        else:
            status = qkv_layernorm_f64(&out[0, 0], &x[0, 0], wp, bp, R, C, eps, simd, n_threads)
    if status != 0:
        raise ValueError(f"qkv_layernorm failed with status {status}")
