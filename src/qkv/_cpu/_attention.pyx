# Cython wrapper of csrc/attention.c. qkv._cpu.attention validates the arguments and makes the
# layouts; this layer re-checks what memory safety depends on (dtypes, shapes, contiguous last axes,
# element strides), passes raw pointers + element strides (so a (B, L, H, D) array transposed to
# (B, H, L, D) costs no copy), releases the GIL and maps status codes to exceptions.
from libc.stdint cimport int64_t
cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef extern from "attention.h" nogil:
    int qkv_attention_f32(float* out, float* lse, float* weights, const float* q, const float* k, const float* v,
                          const void* mask, int mask_kind, const int64_t* mask_row_off, const int64_t* kv_lengths,
                          const int64_t* shape, const int64_t* stride, int causal, float scale, int path, int simd,
                          int n_threads)
    int qkv_attention_f64(double* out, double* lse, double* weights, const double* q, const double* k,
                          const double* v, const void* mask, int mask_kind, const int64_t* mask_row_off,
                          const int64_t* kv_lengths, const int64_t* shape, const int64_t* stride, int causal,
                          double scale, int path, int simd, int n_threads)
    int qkv_attention_path(int is_f32, const int64_t* shape, int has_weights, int path, int simd, int n_threads)

PATH_NAMES = ("auto", "plain", "tiled", "split-k")


cdef void _strides(object a, str name, int64_t* dst) except *:
    """Element strides of axes 0..2 of a 4-D array whose last axis is contiguous."""
    cdef Py_ssize_t item = a.itemsize
    cdef int d
    if a.ndim != 4:
        raise ValueError(f"attention_fwd: {name} must be 4-D, got shape {a.shape}")
    if a.shape[3] > 1 and a.strides[3] != item:
        raise ValueError(f"attention_fwd: {name}'s last axis must be contiguous, strides {a.strides}")
    for d in range(3):
        if a.strides[d] % item:
            raise ValueError(f"attention_fwd: {name}'s strides {a.strides} are not multiples of its itemsize")
        dst[d] = a.strides[d] // item


cdef int _marshal(str fn, object q, object k, object v, object mask, object mask_row_off, int mask_kind,
                  object kv_lengths, int64_t* shape, int64_t* stride, void** mp, const int64_t** offp,
                  const int64_t** klp) except -1:
    """Checks q, k, v, the mask and kv_lengths as attention_fwd and attention_bwd both take them; fills
    shape (B, Hq, Hkv, Lq, Lk, D, Dv), stride (9 element strides), the mask and kv_lengths pointers.
    Returns 1 for float32, 0 for float64. fn names the caller in the messages."""
    dtype = q.dtype
    if dtype not in (np.float32, np.float64) or k.dtype != dtype or v.dtype != dtype:
        raise TypeError(f"{fn}: q, k, v must share a float32/float64 dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    _strides(q, "q", &stride[0])
    _strides(k, "k", &stride[3])
    _strides(v, "v", &stride[6])
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    Dv = v.shape[3]
    if k.shape[0] != B or k.shape[3] != D or tuple(v.shape[:3]) != (B, Hkv, Lk) or Hkv == 0 or Hq % Hkv:
        raise ValueError(f"{fn}: inconsistent shapes q {q.shape}, k {k.shape}, v {v.shape}")
    shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6] = B, Hq, Hkv, Lq, Lk, D, Dv
    if mask_kind != 0:
        if mask is None or mask_row_off is None or mask_row_off.dtype != np.int64 or mask_row_off.ndim != 1 \
                or mask_row_off.shape[0] != B * Hq * Lq or not mask_row_off.flags.c_contiguous:
            raise ValueError(f"{fn}: mask offsets missing or of the wrong length")
        if mask.dtype != (np.uint8 if mask_kind == 1 else dtype) or mask.shape[mask.ndim - 1] < Lk \
                or mask.strides[mask.ndim - 1] != mask.itemsize:
            raise ValueError(f"{fn}: mask of dtype {mask.dtype} shape {mask.shape} does not fit kind {mask_kind}")
        if B * Hq * Lq and (mask_row_off.min() < 0 or mask_row_off.max() + Lk > mask.size):
            raise ValueError(f"{fn}: mask offsets out of range")
        mp[0] = cnp.PyArray_DATA(<cnp.ndarray>mask)
        offp[0] = <const int64_t*>cnp.PyArray_DATA(<cnp.ndarray>mask_row_off)
    if kv_lengths is not None:
        if kv_lengths.dtype != np.int64 or kv_lengths.ndim != 1 or kv_lengths.shape[0] != B \
                or not kv_lengths.flags.c_contiguous:
            raise ValueError(f"{fn}: kv_lengths must be a contiguous int64 array of shape (B,)")
        klp[0] = <const int64_t*>cnp.PyArray_DATA(<cnp.ndarray>kv_lengths)
    return dtype == np.float32


def _contiguous(object a, tuple shape, dtype, str name):
    if a is None:
        return
    if tuple(a.shape) != shape or a.dtype != dtype or not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"attention_fwd: {name} must be a writeable C-contiguous {dtype} array of shape {shape}, "
                         f"got {a.dtype} {a.shape}")


def attention_fwd(object out,             # OUT (B, Hq, Lq, Dv) contiguous
                  object lse,             # OUT (B, Hq, Lq) contiguous, or None
                  object weights,         # OUT (B, Hq, Lq, Lk) contiguous, or None
                  object q,               # IN  (B, Hq, Lq, D), last axis contiguous
                  object k,               # IN  (B, Hkv, Lk, D), last axis contiguous
                  object v,               # IN  (B, Hkv, Lk, Dv), last axis contiguous
                  object mask,            # IN  mask base array (uint8 or q's dtype), or None
                  object mask_row_off,      # IN (B*Hq*Lq,) int64 element offsets of each mask row, or None
                  int mask_kind,
                  object kv_lengths,      # IN  (B,) int64, or None
                  int causal, double scale, int path, int simd, int n_threads):
    cdef int64_t shape[7]
    cdef int64_t stride[9]
    cdef int status = 0
    cdef int is_f32
    cdef void* mp = NULL
    cdef const int64_t* offp = NULL
    cdef const int64_t* klp = NULL
    cdef void* lsep = NULL
    cdef void* wp = NULL
    is_f32 = _marshal("attention_fwd", q, k, v, mask, mask_row_off, mask_kind, kv_lengths, shape, stride,
                      &mp, &offp, &klp)
    dtype = q.dtype
    B, Hq, Hkv, Lq, Lk, D, Dv = shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6]
    _contiguous(out, (B, Hq, Lq, Dv), dtype, "out")
    if out is None:
        raise ValueError("attention_fwd: out is required")
    _contiguous(lse, (B, Hq, Lq), dtype, "lse")
    _contiguous(weights, (B, Hq, Lq, Lk), dtype, "weights")
    if lse is not None:
        lsep = cnp.PyArray_DATA(<cnp.ndarray>lse)
    if weights is not None:
        wp = cnp.PyArray_DATA(<cnp.ndarray>weights)
    cdef void* op = cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef const void* qp = cnp.PyArray_DATA(<cnp.ndarray>q)
    cdef const void* kp = cnp.PyArray_DATA(<cnp.ndarray>k)
    cdef const void* vp = cnp.PyArray_DATA(<cnp.ndarray>v)
    cdef float scale_f = scale
    with nogil:
        if is_f32:
            status = qkv_attention_f32(<float*>op, <float*>lsep, <float*>wp, <const float*>qp, <const float*>kp,
                                       <const float*>vp, mp, mask_kind, offp, klp, shape, stride, causal, scale_f,
                                       path, simd, n_threads)
        else:
            status = qkv_attention_f64(<double*>op, <double*>lsep, <double*>wp, <const double*>qp,
                                       <const double*>kp, <const double*>vp, mp, mask_kind, offp, klp, shape,
                                       stride, causal, scale, path, simd, n_threads)
    if status == -1:
        raise MemoryError("attention_fwd: out of memory for the kernel's scratch")
    if status != 0:
        raise ValueError(f"attention_fwd: the kernel rejected its arguments (status {status})")


def attention_path(bint is_f32, tuple shape, bint has_weights, int path, int simd, int n_threads):
    """The path name a call with these arguments takes; shape = (B, Hq, Hkv, Lq, Lk, D, Dv)."""
    cdef int64_t s[7]
    for i in range(7):
        s[i] = shape[i]
    return PATH_NAMES[qkv_attention_path(is_f32, s, has_weights, path, simd, n_threads)]


# ---------------------------------------------------------------------------------------------
# backward

cdef extern from "attention.h" nogil:
    int qkv_attention_backward_f32(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                   const float* k, const float* v, const float* out, const float* lse,
                                   const void* mask, int mask_kind, const int64_t* mask_row_off,
                                   const int64_t* kv_lengths, const int64_t* shape, const int64_t* stride,
                                   int causal, float scale, int path, int simd, int n_threads)
    int qkv_attention_backward_f64(double* dq, double* dk, double* dv, const double* dout, const double* q,
                                   const double* k, const double* v, const double* out, const double* lse,
                                   const void* mask, int mask_kind, const int64_t* mask_row_off,
                                   const int64_t* kv_lengths, const int64_t* shape, const int64_t* stride,
                                   int causal, double scale, int path, int simd, int n_threads)
    int qkv_attention_backward_path(int is_f32, const int64_t* shape, int path, int simd)


def attention_bwd(object dq,              # OUT (B, Hq, Lq, D) contiguous
                  object dk,              # OUT (B, Hkv, Lk, D) contiguous
                  object dv,              # OUT (B, Hkv, Lk, Dv) contiguous
                  object dout,            # IN  (B, Hq, Lq, Dv) contiguous
                  object q,               # IN  (B, Hq, Lq, D), last axis contiguous
                  object k,               # IN  (B, Hkv, Lk, D), last axis contiguous
                  object v,               # IN  (B, Hkv, Lk, Dv), last axis contiguous
                  object out,             # IN  (B, Hq, Lq, Dv) contiguous, the forward's output
                  object lse,             # IN  (B, Hq, Lq) contiguous, the forward's log-sum-exp
                  object mask,            # IN  mask base array (uint8 or q's dtype), or None
                  object mask_row_off,    # IN  (B*Hq*Lq,) int64 element offsets of each mask row, or None
                  int mask_kind,
                  object kv_lengths,      # IN  (B,) int64, or None
                  int causal, double scale, int path, int simd, int n_threads):
    cdef int64_t shape[7]
    cdef int64_t stride[9]
    cdef int status = 0
    cdef void* mp = NULL
    cdef const int64_t* offp = NULL
    cdef const int64_t* klp = NULL
    cdef int is_f32 = _marshal("attention_bwd", q, k, v, mask, mask_row_off, mask_kind, kv_lengths, shape,
                               stride, &mp, &offp, &klp)
    dtype = q.dtype
    B, Hq, Hkv, Lq, Lk, D, Dv = shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6]
    _contiguous(dq, (B, Hq, Lq, D), dtype, "dq")
    _contiguous(dk, (B, Hkv, Lk, D), dtype, "dk")
    _contiguous(dv, (B, Hkv, Lk, Dv), dtype, "dv")
    for name, a, shp in (("dout", dout, (B, Hq, Lq, Dv)), ("out", out, (B, Hq, Lq, Dv)), ("lse", lse, (B, Hq, Lq))):
        if a is None or tuple(a.shape) != shp or a.dtype != dtype or not a.flags.c_contiguous:
            raise ValueError(f"attention_bwd: {name} must be a C-contiguous {dtype} array of shape {shp}")
    if dq is None or dk is None or dv is None:
        raise ValueError("attention_bwd: dq, dk and dv are required")
    cdef void* dqp = cnp.PyArray_DATA(<cnp.ndarray>dq)
    cdef void* dkp = cnp.PyArray_DATA(<cnp.ndarray>dk)
    cdef void* dvp = cnp.PyArray_DATA(<cnp.ndarray>dv)
    cdef const void* dop = cnp.PyArray_DATA(<cnp.ndarray>dout)
    cdef const void* qp = cnp.PyArray_DATA(<cnp.ndarray>q)
    cdef const void* kp = cnp.PyArray_DATA(<cnp.ndarray>k)
    cdef const void* vp = cnp.PyArray_DATA(<cnp.ndarray>v)
    cdef const void* op = cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef const void* lp = cnp.PyArray_DATA(<cnp.ndarray>lse)
    cdef float scale_f = scale
    with nogil:
        if is_f32:
            status = qkv_attention_backward_f32(<float*>dqp, <float*>dkp, <float*>dvp, <const float*>dop,
                                                <const float*>qp, <const float*>kp, <const float*>vp,
                                                <const float*>op, <const float*>lp, mp, mask_kind, offp, klp,
                                                shape, stride, causal, scale_f, path, simd, n_threads)
        else:
            status = qkv_attention_backward_f64(<double*>dqp, <double*>dkp, <double*>dvp, <const double*>dop,
                                                <const double*>qp, <const double*>kp, <const double*>vp,
                                                <const double*>op, <const double*>lp, mp, mask_kind, offp, klp,
                                                shape, stride, causal, scale, path, simd, n_threads)
    if status == -1:
        raise MemoryError("attention_bwd: out of memory for the kernel's scratch")
    if status != 0:
        raise ValueError(f"attention_bwd: the kernel rejected its arguments (status {status})")


def attention_backward_path(bint is_f32, tuple shape, int path, int simd):
    """The path name a backward call with these arguments takes; shape = (B, Hq, Hkv, Lq, Lk, D, Dv)."""
    cdef int64_t s[7]
    for i in range(7):
        s[i] = shape[i]
    return PATH_NAMES[qkv_attention_backward_path(is_f32, s, path, simd)]
