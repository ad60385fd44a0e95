# Cython wrapper of csrc/softmax.c (softmax, its backward, the fused cross-entropy). Shapes are
# checked by the callers in qkv._cpu; this layer only picks the dtype, releases the GIL and maps
# status codes to exceptions.
from cython cimport floating
from libc.stdint cimport int64_t
cimport numpy as cnp

cnp.import_array()

cdef extern from "softmax.h" nogil:
    int qkv_softmax_f32(float* out, const float* x, const void* mask, int mask_kind, const int64_t* mask_row_off,
                        int64_t R, int64_t N, int64_t M, int causal, float scale, int simd, int n_threads)
    int qkv_softmax_f64(double* out, const double* x, const void* mask, int mask_kind, const int64_t* mask_row_off,
                        int64_t R, int64_t N, int64_t M, int causal, double scale, int simd, int n_threads)
    int qkv_softmax_backward_f32(float* dx, const float* dy, const float* y, int64_t R, int64_t N, float scale,
                                 int simd, int n_threads)
    int qkv_softmax_backward_f64(double* dx, const double* dy, const double* y, int64_t R, int64_t N,
                                 double scale, int simd, int n_threads)
    int qkv_cross_entropy_f32(float* dx, double* losses, const float* x, const int64_t* targets, int64_t R,
                              int64_t V, int64_t ignore_index, float gscale, int simd, int n_threads)
    int qkv_cross_entropy_f64(double* dx, double* losses, const double* x, const int64_t* targets, int64_t R,
                              int64_t V, int64_t ignore_index, double gscale, int simd, int n_threads)


def softmax_rows(floating[:, ::1] out,            # OUT (R, N)
                 const floating[:, ::1] x,        # IN  (R, N)
                 cnp.ndarray mask,                # IN  broadcast mask view, or None
                 const int64_t[::1] mask_row_off, # IN  (R,) element offset of each row's mask, or None
                 int mask_kind, int64_t M, int causal, double scale, int simd, int n_threads):
    cdef int64_t R = x.shape[0], N = x.shape[1]
    cdef const void* mp = NULL
    cdef const int64_t* offp = NULL
    cdef int status
    if out.shape[0] != R or out.shape[1] != N:
        raise ValueError("softmax_rows: out shape mismatch")
    if mask_kind != 0:
        if mask is None or mask_row_off is None or mask_row_off.shape[0] != R:
            raise ValueError("softmax_rows: mask offsets missing or of the wrong length")
        mp = cnp.PyArray_DATA(mask)
        offp = &mask_row_off[0]
    if R == 0:
        return
    with nogil:
        if floating is float:
            status = qkv_softmax_f32(&out[0, 0], &x[0, 0], mp, mask_kind, offp, R, N, M, causal, <float>scale,
                                     simd, n_threads)
        else:
            status = qkv_softmax_f64(&out[0, 0], &x[0, 0], mp, mask_kind, offp, R, N, M, causal, scale,
                                     simd, n_threads)
    if status != 0:
        raise ValueError(f"qkv_softmax failed with status {status}")


def softmax_backward_rows(floating[:, ::1] dx,        # OUT (R, N)
                          const floating[:, ::1] dy,  # IN  (R, N)
                          const floating[:, ::1] y,   # IN  (R, N): the softmax output
                          double scale, int simd, int n_threads):
    cdef int64_t R = y.shape[0], N = y.shape[1]
    cdef int status
    if dx.shape[0] != R or dx.shape[1] != N or dy.shape[0] != R or dy.shape[1] != N:
        raise ValueError("softmax_backward_rows: shape mismatch")
    if R == 0:
        return
    with nogil:
        if floating is float:
            status = qkv_softmax_backward_f32(&dx[0, 0], &dy[0, 0], &y[0, 0], R, N, <float>scale, simd, n_threads)
        else:
            status = qkv_softmax_backward_f64(&dx[0, 0], &dy[0, 0], &y[0, 0], R, N, scale, simd, n_threads)
    if status != 0:
        raise ValueError(f"qkv_softmax_backward failed with status {status}")


def cross_entropy_rows(const floating[:, ::1] x,       # IN  (R, V) logits (first: it picks the dtype)
                       const int64_t[::1] targets,     # IN  (R,)
                       double[::1] losses,             # OUT (R,) per-row losses
                       floating[:, ::1] dx,            # OUT (R, V) or None (loss only)
                       int64_t ignore_index, double gscale, int simd, int n_threads):
    cdef int64_t R = x.shape[0], V = x.shape[1]
    cdef floating* dxp = NULL
    cdef int status
    if losses.shape[0] != R or targets.shape[0] != R:
        raise ValueError("cross_entropy_rows: losses/targets length mismatch")
    if dx is not None:
        if dx.shape[0] != R or dx.shape[1] != V:
            raise ValueError("cross_entropy_rows: dx shape mismatch")
        dxp = &dx[0, 0] if R else NULL
    if R == 0:
        return
    with nogil:
        if floating is float:
            status = qkv_cross_entropy_f32(dxp, &losses[0], &x[0, 0], &targets[0], R, V, ignore_index,
                                           <float>gscale, simd, n_threads)
        else:
            status = qkv_cross_entropy_f64(dxp, &losses[0], &x[0, 0], &targets[0], R, V, ignore_index, gscale,
                                           simd, n_threads)
    if status != 0:
        raise ValueError(f"qkv_cross_entropy failed with status {status} (a target outside [0, {V})?)")
