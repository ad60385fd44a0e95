# Cython wrapper of csrc/softmax.c. Shapes are checked by the caller (qkv._cpu.softmax); this
# layer only picks the dtype, releases the GIL and maps status codes to exceptions.
from cython cimport floating
from libc.stdint cimport int64_t
cimport numpy as cnp

cnp.import_array()

cdef extern from "softmax.h" nogil:
    int qkv_softmax_f32(float* out, const float* x, const void* mask, int mask_kind, const int64_t* mask_row_off,
                        int64_t R, int64_t N, int64_t M, int causal, float scale, int simd, int n_threads)
    int qkv_softmax_f64(double* out, const double* x, const void* mask, int mask_kind, const int64_t* mask_row_off,
                        int64_t R, int64_t N, int64_t M, int causal, double scale, int simd, int n_threads)


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
