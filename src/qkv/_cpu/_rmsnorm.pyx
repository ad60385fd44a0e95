# Cython wrapper of csrc/rmsnorm.c (forward and backward). Shapes are checked by the caller
# (qkv._cpu.rms_norm, qkv._cpu.rms_norm_backward).
from cython cimport floating
from libc.stdint cimport int64_t

from qkv._cpu._vectors cimport cvec_ptr, vec_ptr

cdef extern from "rmsnorm.h" nogil:
    int qkv_rmsnorm_f32(float* out, float* rstd, const float* x, const float* weight, int64_t R, int64_t C,
                        float eps, int simd, int n_threads)
    int qkv_rmsnorm_f64(double* out, double* rstd, const double* x, const double* weight, int64_t R, int64_t C,
                        double eps, int simd, int n_threads)
    int qkv_rmsnorm_backward_f32(float* dx, float* dweight, const float* dy, const float* x, const float* weight,
                                 const float* rstd, int64_t R, int64_t C, float eps, int simd, int n_threads)
    int qkv_rmsnorm_backward_f64(double* dx, double* dweight, const double* dy, const double* x,
                                 const double* weight, const double* rstd, int64_t R, int64_t C, double eps,
                                 int simd, int n_threads)


def rmsnorm_rows(floating[:, ::1] out,       # OUT (R, C)
                 const floating[:, ::1] x,   # IN  (R, C)
                 const floating[::1] weight, # IN  (C,) or None
                 floating[::1] rstd,         # OUT (R,) or None
                 double eps, int simd, int n_threads):
    cdef int64_t R = x.shape[0], C = x.shape[1]
    cdef const floating* wp = cvec_ptr(weight, C, "rmsnorm weight")
    cdef floating* rp = vec_ptr(rstd, R, "rmsnorm rstd")
    cdef int status
    if out.shape[0] != R or out.shape[1] != C:
        raise ValueError("rmsnorm_rows: out shape mismatch")
    if R == 0:
        return
    with nogil:
        if floating is float:
            status = qkv_rmsnorm_f32(&out[0, 0], rp, &x[0, 0], wp, R, C, <float>eps, simd, n_threads)
        else:
            status = qkv_rmsnorm_f64(&out[0, 0], rp, &x[0, 0], wp, R, C, eps, simd, n_threads)
    if status != 0:
        raise ValueError(f"qkv_rmsnorm failed with status {status}")


def rmsnorm_backward_rows(floating[:, ::1] dx,        # OUT (R, C)
                          floating[::1] dweight,      # OUT (C,) or None
                          const floating[:, ::1] dy,  # IN  (R, C)
                          const floating[:, ::1] x,   # IN  (R, C)
                          const floating[::1] weight, # IN  (C,) or None
                          const floating[::1] rstd,   # IN  (R,) or None (recomputed)
                          double eps, int simd, int n_threads):
    cdef int64_t R = x.shape[0], C = x.shape[1]
    cdef floating* dwp = vec_ptr(dweight, C, "rmsnorm dweight")
    cdef const floating* wp = cvec_ptr(weight, C, "rmsnorm weight")
    cdef const floating* rp = cvec_ptr(rstd, R, "rmsnorm rstd")
    cdef int status
    if dx.shape[0] != R or dx.shape[1] != C or dy.shape[0] != R or dy.shape[1] != C:
        raise ValueError("rmsnorm_backward_rows: dx/dy shape mismatch")
    with nogil:
        if floating is float:
            status = qkv_rmsnorm_backward_f32(&dx[0, 0] if R else NULL, dwp, &dy[0, 0] if R else NULL,
                                              &x[0, 0] if R else NULL, wp, rp, R, C, <float>eps, simd, n_threads)
        else:
            status = qkv_rmsnorm_backward_f64(&dx[0, 0] if R else NULL, dwp, &dy[0, 0] if R else NULL,
                                              &x[0, 0] if R else NULL, wp, rp, R, C, eps, simd, n_threads)
    if status == -1:
        raise MemoryError("qkv_rmsnorm_backward: out of memory")
    if status != 0:
        raise ValueError(f"qkv_rmsnorm_backward failed with status {status}")
