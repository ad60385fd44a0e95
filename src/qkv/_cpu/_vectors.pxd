# Pointers to the optional (n,) vectors the Cython wrappers hand to the C kernels (weights, biases,
# saved statistics): NULL for None, a ValueError naming the vector when its length is not n.
from cython cimport floating
from libc.stdint cimport int64_t


cdef inline const floating* cvec_ptr(const floating[::1] a, int64_t n, str name) except? NULL:
    if a is None:
        return NULL
    if a.shape[0] != n:
        raise ValueError(f"{name} has length {a.shape[0]}, expected {n}")
    return &a[0]


cdef inline floating* vec_ptr(floating[::1] a, int64_t n, str name) except? NULL:
    if a is None:
        return NULL
    if a.shape[0] != n:
        raise ValueError(f"{name} has length {a.shape[0]}, expected {n}")
    return &a[0]
