# Cython wrapper of csrc/optim.c: the fused AdamW update of one parameter, and the sum of squares
# of a gradient (clip_grad_norm). The caller
# (qkv.optim) checks that p, g, m, v are contiguous with one shape and dtype; this layer picks the
# dtype, releases the GIL and maps status codes to exceptions.
from cython cimport floating
from libc.stdint cimport int64_t

cdef extern from "optim.h" nogil:
    int qkv_adamw_f32(float* p, const float* g, float* m, float* v, int64_t n, double beta1, double beta2,
                      double eps, double step_size, double bc2_sqrt, double decay, int simd, int n_threads)
    int qkv_adamw_f64(double* p, const double* g, double* m, double* v, int64_t n, double beta1, double beta2,
                      double eps, double step_size, double bc2_sqrt, double decay, int simd, int n_threads)
    double qkv_sumsq_f32(const float* x, int64_t n, int n_threads)
    double qkv_sumsq_f64(const double* x, int64_t n, int n_threads)


def adamw_update(floating[::1] p,        # INOUT (n,) the parameter
                 const floating[::1] g,  # IN    (n,) its gradient
                 floating[::1] m,        # INOUT (n,) first moment
                 floating[::1] v,        # INOUT (n,) second moment
                 double beta1, double beta2, double eps, double step_size, double bc2_sqrt, double decay,
                 int simd, int n_threads):
    cdef int64_t n = p.shape[0]
    cdef int status
    if g.shape[0] != n or m.shape[0] != n or v.shape[0] != n:
        raise ValueError("adamw_update: p, g, m, v must have the same length")
    if n == 0:
        return
    with nogil:
        if floating is float:
            status = qkv_adamw_f32(&p[0], &g[0], &m[0], &v[0], n, beta1, beta2, eps, step_size, bc2_sqrt, decay,
                                   simd, n_threads)
        else:
            status = qkv_adamw_f64(&p[0], &g[0], &m[0], &v[0], n, beta1, beta2, eps, step_size, bc2_sqrt, decay,
                                   simd, n_threads)
    if status != 0:
        raise ValueError(f"qkv_adamw failed with status {status}")


def sumsq(const floating[::1] x, int n_threads):
    """The sum of x[i]^2 in double (csrc/optim.c; the same bits for any thread count)."""
    cdef int64_t n = x.shape[0]
    cdef double s = 0
    if n == 0:
        return 0.0
    with nogil:
        if floating is float:
            s = qkv_sumsq_f32(&x[0], n, n_threads)
        else:
            s = qkv_sumsq_f64(&x[0], n, n_threads)
    return s
