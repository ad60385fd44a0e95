# Cython wrapper of csrc/embedding.c: the embedding backward. Shapes and id ranges are checked by
# the caller (qkv._cpu.embedding_backward); the kernel checks the ids again (ValueError).
from cython cimport floating
from libc.stdint cimport int64_t

cdef extern from "embedding.h" nogil:
    int qkv_embedding_backward_f32(float* dtable, const float* dout, const int64_t* ids, int64_t n, int64_t V,
                                   int64_t C, int simd, int n_threads)
    int qkv_embedding_backward_f64(double* dtable, const double* dout, const int64_t* ids, int64_t n, int64_t V,
                                   int64_t C, int simd, int n_threads)


def embedding_backward_rows(floating[:, ::1] dtable,      # OUT (V, C)
                            const floating[:, ::1] dout,  # IN  (n, C)
                            const int64_t[::1] ids,       # IN  (n,) in [0, V)
                            int simd, int n_threads):
    cdef int64_t V = dtable.shape[0], C = dtable.shape[1], n = ids.shape[0]
    cdef int status
    if dout.shape[0] != n or dout.shape[1] != C:
        raise ValueError("embedding_backward_rows: dout shape mismatch")
    with nogil:
        if floating is float:
            status = qkv_embedding_backward_f32(&dtable[0, 0], &dout[0, 0] if n else NULL, &ids[0] if n else NULL,
                                                n, V, C, simd, n_threads)
        else:
            status = qkv_embedding_backward_f64(&dtable[0, 0], &dout[0, 0] if n else NULL, &ids[0] if n else NULL,
                                                n, V, C, simd, n_threads)
    if status == -1:
        raise MemoryError("qkv_embedding_backward: out of memory")
    if status != 0:
        raise ValueError(f"qkv_embedding_backward failed with status {status} (an id outside [0, {V})?)")
