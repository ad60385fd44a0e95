# Cython wrapper of csrc/layernorm.c (forward and backward). Shapes are checked by the caller
# (qkv._cpu.layer_norm, qkv._cpu.layer_norm_backward).
from cython cimport floating
from libc.stdint cimport int64_t

from qkv._cpu._vectors cimport cvec_ptr, vec_ptr

cdef extern from "layernorm.h" nogil:
    int qkv_layernorm_f32(float* out, float* mean, float* rstd, const float* x, const float* weight,
                          const float* bias, int64_t R, int64_t C, float eps, int simd, int n_threads)
    int qkv_layernorm_f64(double* out, double* mean, double* rstd, const double* x, const double* weight,
                          const double* bias, int64_t R, int64_t C, double eps, int simd, int n_threads)
    int qkv_layernorm_backward_f32(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                                   const float* weight, const float* mean, const float* rstd, int64_t R,
                                   int64_t C, float eps, int simd, int n_threads)
    int qkv_layernorm_backward_f64(double* dx, double* dweight, double* dbias, const double* dy, const double* x,
                                   const double* weight, const double* mean, const double* rstd, int64_t R,
                                   int64_t C, double eps, int simd, int n_threads)


def layernorm_rows(floating[:, ::1] out,       # OUT (R, C)
                   const floating[:, ::1] x,   # IN  (R, C)
                   const floating[::1] weight, # IN  (C,) or None
                   const floating[::1] bias,   # IN  (C,) or None
                   floating[::1] mean,         # OUT (R,) or None
                   floating[::1] rstd,         # OUT (R,) or None
                   double eps, int simd, int n_threads):
    cdef int64_t R = x.shape[0], C = x.shape[1]
    cdef const floating* wp = cvec_ptr(weight, C, "layernorm weight")
    cdef const floating* bp = cvec_ptr(bias, C, "layernorm bias")
    cdef floating* mp = vec_ptr(mean, R, "layernorm mean")
    cdef floating* rp = vec_ptr(rstd, R, "layernorm rstd")
    cdef int status
    if out.shape[0] != R or out.shape[1] != C:
        raise ValueError("layernorm_rows: out shape mismatch")
    if R == 0:
        return
    with nogil:
        if floating is float:
            status = qkv_layernorm_f32(&out[0, 0], mp, rp, &x[0, 0], wp, bp, R, C, <float>eps, simd, n_threads)
        else:
            status = qkv_layernorm_f64(&out[0, 0], mp, rp, &x[0, 0], wp, bp, R, C, eps, simd, n_threads)
    if status != 0:
        raise ValueError(f"qkv_layernorm failed with status {status}")


def layernorm_backward_rows(floating[:, ::1] dx,        # OUT (R, C)
                            floating[::1] dweight,      # OUT (C,) or None
                            floating[::1] dbias,        # OUT (C,) or None
                            const floating[:, ::1] dy,  # IN  (R, C)
                            const floating[:, ::1] x,   # IN  (R, C)
                            const floating[::1] weight, # IN  (C,) or None
                            const floating[::1] mean,   # IN  (R,) or None (recomputed)
                            const floating[::1] rstd,   # IN  (R,) or None
                            double eps, int simd, int n_threads):
    cdef int64_t R = x.shape[0], C = x.shape[1]
    cdef floating* dwp = vec_ptr(dweight, C, "layernorm dweight")
    cdef floating* dbp = vec_ptr(dbias, C, "layernorm dbias")
    cdef const floating* wp = cvec_ptr(weight, C, "layernorm weight")
    cdef const floating* mp = cvec_ptr(mean, R, "layernorm mean")
    cdef const floating* rp = cvec_ptr(rstd, R, "layernorm rstd")
    cdef int status
    if dx.shape[0] != R or dx.shape[1] != C or dy.shape[0] != R or dy.shape[1] != C:
        raise ValueError("layernorm_backward_rows: dx/dy shape mismatch")
    if (mp == NULL) != (rp == NULL):
        raise ValueError("layernorm_backward_rows: pass both mean and rstd or neither")
    with nogil:
        if floating is float:
            status = qkv_layernorm_backward_f32(&dx[0, 0] if R else NULL, dwp, dbp, &dy[0, 0] if R else NULL,
                                                &x[0, 0] if R else NULL, wp, mp, rp, R, C, <float>eps, simd,
                                                n_threads)
        else:
            status = qkv_layernorm_backward_f64(&dx[0, 0] if R else NULL, dwp, dbp, &dy[0, 0] if R else NULL,
                                                &x[0, 0] if R else NULL, wp, mp, rp, R, C, eps, simd, n_threads)
    if status == -1:
        raise MemoryError("qkv_layernorm_backward: out of memory")
    if status != 0:
        raise ValueError(f"qkv_layernorm_backward failed with status {status}")
