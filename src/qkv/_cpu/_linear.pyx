# Cython wrapper for qkv.linear on the CPU: y = act(x @ W + b).
#
# The GEMM is SciPy's BLAS (scipy.linalg.cython_blas sgemm/dgemm; we never link a BLAS ourselves).
# BLAS is column-major; a row-major (M, N) = (M, K) @ (K, N) is the column-major product
# (N, M) = (N, K) @ (K, M), so we swap the operands instead of transposing anything. W may be
# row-major (in, out) or column-major, i.e. the transpose of a row-major (out, in) array such as a
# PyTorch/HF nn.Linear weight: that only flips BLAS's trans flag, no copy.
# One row (M == 1, a decode step) goes to sgemv/dgemv instead: OpenBLAS's GEMM with a unit
# dimension reads the weight at a fraction of memory bandwidth (1.4 ms vs 0.36 ms for 768x2304).
# The bias + activation epilogue then runs in place on the output (csrc/activation.c).
from cython cimport floating
from libc.stdint cimport int64_t
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

from qkv._cpu._activation cimport qkv_bias_act_f32, qkv_bias_act_f64


def linear_rows(floating[:, ::1] out,         # OUT (M, N)
                const floating[:, ::1] x,     # IN  (M, K)
                const floating[:, :] w,       # IN  (K, N), row- or column-major
                const floating[::1] bias,     # IN  (N,) or None
                int act, int simd, int n_threads):
    cdef int M = x.shape[0], K = x.shape[1], N = w.shape[1]
    cdef int itemsize = sizeof(floating)
    cdef char transa
    cdef int ldw, lda = K, ldc = N
    cdef floating alpha = 1, beta = 0
    cdef const floating* bp = NULL
    cdef int status = 0
    cdef int one = 1, gm, gn
    if w.shape[0] != K or out.shape[0] != M or out.shape[1] != N:
        raise ValueError("linear_rows: shape mismatch")
    if w.strides[1] == itemsize and w.strides[0] % itemsize == 0 and w.strides[0] >= N * itemsize:
        transa = b'N'                            # w row-major: column-major (N, K) with ld = row stride
        ldw = w.strides[0] // itemsize
    elif w.strides[0] == itemsize and w.strides[1] % itemsize == 0 and w.strides[1] >= K * itemsize:
        transa = b'T'                            # w column-major: column-major (K, N); use its transpose
        ldw = w.strides[1] // itemsize
    else:
        raise ValueError("linear_rows: weight must be row- or column-contiguous")
    if bias is not None:
        if bias.shape[0] != N:
            raise ValueError("linear_rows: bias length mismatch")
        bp = &bias[0]
    if M == 0:
        return
    ldw = max(ldw, 1)
    # gemv view of the same column-major operand: (N, K) for 'N', (K, N) for 'T'
    gm, gn = (N, K) if transa == b'N' else (K, N)
    with nogil:
        if floating is float:
            if M == 1 and K > 0:
                sgemv(&transa, &gm, &gn, &alpha, <float*>&w[0, 0], &ldw, <float*>&x[0, 0], &one,
                      &beta, &out[0, 0], &one)
            else:
                sgemm(&transa, b'N', &N, &M, &K, &alpha, <float*>&w[0, 0], &ldw, <float*>&x[0, 0], &lda,
                      &beta, &out[0, 0], &ldc)
            if bp != NULL or act != 0:
                status = qkv_bias_act_f32(&out[0, 0], &out[0, 0], bp, M, N, act, simd, n_threads)
        else:
            if M == 1 and K > 0:
                dgemv(&transa, &gm, &gn, &alpha, <double*>&w[0, 0], &ldw, <double*>&x[0, 0], &one,
                      &beta, &out[0, 0], &one)
            else:
                dgemm(&transa, b'N', &N, &M, &K, &alpha, <double*>&w[0, 0], &ldw, <double*>&x[0, 0], &lda,
                      &beta, &out[0, 0], &ldc)
            if bp != NULL or act != 0:
                status = qkv_bias_act_f64(&out[0, 0], &out[0, 0], bp, M, N, act, simd, n_threads)
    if status != 0:
        raise ValueError(f"qkv_bias_act failed with status {status}")
