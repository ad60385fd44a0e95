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
#
# Backward (linear_backward_rows): one fused pass over the pre-activation gives g = dy * act'(pre)
# and the column sums db (csrc/activation.c, deterministic), then two GEMMs: dx = g W^T and
# dW = x^T g, each again by choosing BLAS operand orders, never by transposing a copy.
#
# Threads per GEMM (_gemm_threads, the one place that decides): a GEMM gets one BLAS thread per
# GEMM_FLOPS_PER_THREAD of work, at most qkv's thread count, so a tiny GEMM (a few MFLOP, tens of
# microseconds) does not pay for waking a second thread. Measured on the quiet 2-core AVX2 machine:
# at 2^28 (270 MFLOP, tuned earlier on a machine at load 12) the baby GPT's GEMMs (768 x 128 x 512,
# 100 MFLOP) ran on one thread at 55 GFLOP/s against 110 on two, and a training step took 118 ms;
# at 2^22 it takes 64-78 ms. On a heavily shared machine a split GEMM can stall on a descheduled
# thread; qkv.set_num_threads(1) is the answer there. The count is set through OpenBLAS's own
# openblas_set_num_threads (found by qkv._cpu._config.blas_thread_control), only when it changes.
from cython cimport floating
from libc.stdint cimport int64_t
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

from qkv._cpu._activation cimport qkv_bias_act_f32, qkv_bias_act_f64, qkv_act_backward_f32, qkv_act_backward_f64


ctypedef int (*_get_threads_t)() noexcept nogil
ctypedef void (*_set_threads_t)(int) noexcept nogil
cdef _get_threads_t _blas_get_threads = NULL
cdef _set_threads_t _blas_set_threads = NULL
GEMM_FLOPS_PER_THREAD = 1 << 22  # ~4 MFLOP: below it a GEMM runs on one thread
cdef double _flops_per_thread = GEMM_FLOPS_PER_THREAD


def set_blas_thread_control(size_t get_addr, size_t set_addr):
    """Addresses of the BLAS's get/set thread-count functions (0, 0: leave the BLAS alone)."""
    global _blas_get_threads, _blas_set_threads
    _blas_get_threads = <_get_threads_t>get_addr if get_addr and set_addr else NULL
    _blas_set_threads = <_set_threads_t>set_addr if get_addr and set_addr else NULL


cdef inline void _gemm_threads(double m, double n, double k, int n_threads) noexcept nogil:
    """Give the next BLAS call one thread per GEMM_FLOPS_PER_THREAD of its 2 m n k flops (1 to n_threads)."""
    cdef double share = 2.0 * m * n * k / _flops_per_thread
    cdef int want = n_threads if share >= n_threads else (<int>share if share >= 1 else 1)
    if _blas_set_threads != NULL and _blas_get_threads() != want:
        _blas_set_threads(want)


cdef int _weight_layout(const floating[:, :] w, int K, int N, char* trans, int* ld) except -1:
    """BLAS view of a (K, N) weight: row-major -> (b'N', row stride), i.e. column-major (N, K);
    column-major -> (b'T', column stride), i.e. column-major (K, N) used transposed.

    trans is what linear_rows passes for the forward product x @ W in the swapped column-major form.
    """
    cdef int itemsize = sizeof(floating)
    if w.strides[1] == itemsize and w.strides[0] % itemsize == 0 and w.strides[0] >= N * itemsize:
        trans[0] = b'N'
        ld[0] = max(w.strides[0] // itemsize, 1)
    elif w.strides[0] == itemsize and w.strides[1] % itemsize == 0 and w.strides[1] >= K * itemsize:
        trans[0] = b'T'
        ld[0] = max(w.strides[1] // itemsize, 1)
    else:
        raise ValueError("linear: weight must be row- or column-contiguous")
    return 0


cdef inline void _gemm(char* ta, char* tb, int m, int n, int k, const floating* a, int lda,
                       const floating* b, int ldb, floating* c, int ldc) noexcept nogil:
    """Column-major C (m, n) = op(A) (m, k) @ op(B) (k, n): sgemm or dgemm by dtype."""
    cdef floating alpha = 1, beta = 0
    if floating is float:
        sgemm(ta, tb, &m, &n, &k, &alpha, <float*>a, &lda, <float*>b, &ldb, &beta, c, &ldc)
    else:
        dgemm(ta, tb, &m, &n, &k, &alpha, <double*>a, &lda, <double*>b, &ldb, &beta, c, &ldc)


cdef inline int _act_backward(floating* g, floating* db, const floating* dy, const floating* pre, int64_t M,
                              int64_t N, int act, int simd, int n_threads) noexcept nogil:
    """qkv_act_backward_f32/_f64 by dtype (csrc/activation.c): g = dy * act'(pre), db = column sums."""
    if floating is float:
        return qkv_act_backward_f32(g, db, dy, pre, M, N, act, simd, n_threads)
    else:
        return qkv_act_backward_f64(g, db, dy, pre, M, N, act, simd, n_threads)


def linear_rows(floating[:, ::1] out,         # OUT (M, N)
                const floating[:, ::1] x,     # IN  (M, K)
                const floating[:, :] w,       # IN  (K, N), row- or column-major
                const floating[::1] bias,     # IN  (N,) or None
                int act, int simd, int n_threads):
    cdef int M = x.shape[0], K = x.shape[1], N = w.shape[1]
    cdef char transa
    cdef int ldw, lda = K, ldc = N
    cdef floating alpha = 1, beta = 0
    cdef const floating* bp = NULL
    cdef int status = 0
    cdef int one = 1, gm, gn
    if w.shape[0] != K or out.shape[0] != M or out.shape[1] != N:
        raise ValueError("linear_rows: shape mismatch")
    _weight_layout(w, K, N, &transa, &ldw)
    if bias is not None:
        if bias.shape[0] != N:
            raise ValueError("linear_rows: bias length mismatch")
        bp = &bias[0]
    if M == 0:
        return
    # gemv view of the same column-major operand: (N, K) for 'N', (K, N) for 'T'
    gm, gn = (N, K) if transa == b'N' else (K, N)
    with nogil:
        if M == 1 and K > 0:
            _gemm_threads(n_threads, 1, _flops_per_thread, n_threads)  # a GEMV reads memory: every thread
        else:
            _gemm_threads(M, N, K, n_threads)
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


def linear_backward_rows(floating[:, ::1] dx,        # OUT  (M, K)
                         floating[:, :] dw,          # OUT  (K, N), C- or F-contiguous (as the weight)
                         floating[::1] db,           # OUT  (N,) or None
                         floating[:, ::1] g,         # WORK (M, N): dy * act'(pre); None when act == 0
                         const floating[:, ::1] dy,  # IN   (M, N)
                         const floating[:, ::1] x,   # IN   (M, K)
                         const floating[:, :] w,     # IN   (K, N), row- or column-major
                         const floating[:, ::1] pre, # IN   (M, N) pre-activation, or None when act == 0
                         int act, int simd, int n_threads):
    cdef int M = x.shape[0], K = x.shape[1], N = w.shape[1]
    cdef int itemsize = sizeof(floating)
    cdef char tw, tn = b'N', tt = b'T'
    cdef int ldw = 0  # set by _weight_layout
    cdef floating* dbp = NULL
    cdef const floating* gp
    cdef int status = 0
    cdef bint dw_fortran
    if w.shape[0] != K or dy.shape[0] != M or dy.shape[1] != N or dx.shape[0] != M or dx.shape[1] != K:
        raise ValueError("linear_backward_rows: shape mismatch")
    if dw.shape[0] != K or dw.shape[1] != N:
        raise ValueError("linear_backward_rows: dw shape mismatch")
    _weight_layout(w, K, N, &tw, &ldw)
    if dw.strides[1] == itemsize and dw.strides[0] == N * itemsize:
        dw_fortran = False
    elif dw.strides[0] == itemsize and dw.strides[1] == K * itemsize:
        dw_fortran = True
    else:
        raise ValueError("linear_backward_rows: dw must be C- or F-contiguous")
    if db is not None:
        if db.shape[0] != N:
            raise ValueError("linear_backward_rows: db length mismatch")
        dbp = &db[0]
    if act != 0 and (g is None or pre is None or g.shape[0] != M or g.shape[1] != N
                     or pre.shape[0] != M or pre.shape[1] != N):
        raise ValueError("linear_backward_rows: an activation needs g and pre of shape (M, N)")
    if M == 0:
        return
    # BLAS: dx^T (K, M) = op(W) (K, N) @ g^T (N, M): the weight's forward trans flag, flipped
    tw = b'T' if tw == b'N' else b'N'
    with nogil:
        if act != 0:
            status = _act_backward(&g[0, 0], dbp, &dy[0, 0], &pre[0, 0], M, N, act, simd, n_threads)
            gp = &g[0, 0]
        else:
            gp = &dy[0, 0]
            if dbp != NULL:
                status = _act_backward(<floating*>NULL, dbp, &dy[0, 0], <const floating*>NULL, M, N, 0, simd,
                                       n_threads)
        if status == 0:
            _gemm_threads(M, N, K, n_threads)  # both GEMMs have M N K
            _gemm(&tw, &tn, K, M, N, &w[0, 0], ldw, gp, N, &dx[0, 0], K)
            if dw_fortran:  # dW (K, N) column-major = x^T g
                _gemm(&tn, &tt, K, N, M, &x[0, 0], K, gp, N, &dw[0, 0], K)
            else:           # dW^T (N, K) column-major = g^T x
                _gemm(&tn, &tt, N, K, M, gp, N, &x[0, 0], K, &dw[0, 0], N)
    if status == -1:
        raise MemoryError("qkv_act_backward: out of memory")
    if status != 0:
        raise ValueError(f"qkv_act_backward failed with status {status}")
