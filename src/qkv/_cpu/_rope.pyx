# Cython wrapper of csrc/rope.c. Shapes are checked by the caller (qkv._cpu.rope); the strides of
# x and out (B, L, H, D) are read from the memoryviews, whose last axis must be contiguous.
from cython cimport floating
from libc.stdint cimport int64_t

cdef extern from "rope.h" nogil:
    int qkv_rope_f32(float* out, const float* x, const int64_t* pos, const double* inv_freq, int64_t B, int64_t L,
                     int64_t H, int64_t D, const int64_t* xs, const int64_t* os, const int64_t* ps, int inverse,
                     int simd, int n_threads)
    int qkv_rope_f64(double* out, const double* x, const int64_t* pos, const double* inv_freq, int64_t B,
                     int64_t L, int64_t H, int64_t D, const int64_t* xs, const int64_t* os, const int64_t* ps,
                     int inverse, int simd, int n_threads)


def rope_rows(floating[:, :, :, :] out,        # OUT (B, L, H, D), may be x itself
              const floating[:, :, :, :] x,    # IN  (B, L, H, D)
              const int64_t[:, :] pos,         # IN  (B, L) (a broadcast (L,) row has stride 0)
              const double[::1] inv_freq,      # IN  (D/2,)
              bint inverse, int simd, int n_threads):
    cdef int64_t B = x.shape[0], L = x.shape[1], H = x.shape[2], D = x.shape[3]
    cdef int64_t xs[3]
    cdef int64_t os[3]
    cdef int64_t ps[2]
    cdef int k, status
    cdef int64_t itemsize = sizeof(floating)
    if (out.shape[0] != B or out.shape[1] != L or out.shape[2] != H or out.shape[3] != D or pos.shape[0] != B
            or pos.shape[1] != L):
        raise ValueError("rope_rows: shape mismatch")
    if x.strides[3] != itemsize or out.strides[3] != itemsize:
        raise ValueError("rope_rows: the last axis of x and out must be contiguous")
    if D % 2 or inv_freq.shape[0] != D // 2:
        raise ValueError("rope_rows: inv_freq must have D/2 entries for an even D")
    for k in range(3):
        if x.strides[k] % itemsize or out.strides[k] % itemsize:
            raise ValueError("rope_rows: strides must be whole elements")
        xs[k] = x.strides[k] // itemsize
        os[k] = out.strides[k] // itemsize
    for k in range(2):
        ps[k] = pos.strides[k] // sizeof(int64_t)
    if B * L * H == 0:
        return
    with nogil:
        if floating is float:
            status = qkv_rope_f32(&out[0, 0, 0, 0], &x[0, 0, 0, 0], &pos[0, 0], &inv_freq[0], B, L, H, D, xs, os, ps,
                                  inverse, simd, n_threads)
        else:
            status = qkv_rope_f64(&out[0, 0, 0, 0], &x[0, 0, 0, 0], &pos[0, 0], &inv_freq[0], B, L, H, D, xs, os,
                                  ps, inverse, simd, n_threads)
    if status == -1:
        raise MemoryError("qkv_rope: out of memory")
    if status != 0:
        raise ValueError(f"qkv_rope failed with status {status}")
