# Cython wrapper for qkv.linear with low-precision weights on the CPU (csrc/quant.c):
# y = act(x @ W + b), W a qkv.QuantizedWeight stored as N rows of K (bf16, or int8 + float16
# scales per block of 32).
#
# A few rows of x (decode: M <= SMALL_M) go to the streaming kernels qkv_qlinear_*, which read W
# once with the threads splitting the output columns. More rows (prefill, batches) are GEMM-bound:
# a panel of W's columns is converted to float32 (qkv_dequant_*, in cache) and multiplied with
# SciPy's sgemm, panel by panel. BLAS is column-major: the row-major panel (nb, K) is the
# column-major (K, nb) used transposed, and y (M, N) row-major is y^T (N, M) with ld N.
# The bias + activation epilogue then runs in place on y (csrc/activation.c). GIL released.
from libc.stdint cimport int64_t, int8_t, uint16_t
from libc.stdlib cimport malloc, free
from scipy.linalg.cython_blas cimport sgemm

from qkv._cpu._activation cimport qkv_bias_act_f32

cdef extern from "quant.h" nogil:
    int qkv_qlinear_bf16(float* y, const float* x, const uint16_t* w, int64_t M, int64_t K, int64_t N, int simd,
                         int n_threads)
    int qkv_qlinear_q8(float* y, const float* x, const int8_t* q, const uint16_t* s, int64_t M, int64_t K,
                       int64_t N, int simd, int n_threads)
    int qkv_dequant_bf16(float* out, const uint16_t* w, int64_t R, int64_t K, int simd, int n_threads)
    int qkv_dequant_q8(float* out, const int8_t* q, const uint16_t* s, int64_t R, int64_t K, int simd,
                       int n_threads)

# rows of x up to which the streaming kernel beats converting panels for sgemm (decode, small batches)
cdef int64_t _SMALL_M = 4
# the float32 panel of W converted per sgemm call: about this many weights (1 MiB), whole 16s of columns
cdef int64_t _PANEL_WEIGHTS = 1 << 18
SMALL_M, PANEL_WEIGHTS = _SMALL_M, _PANEL_WEIGHTS

# what each SIMD level runs (qkv info)
KERNELS = {
    "scalar": "plain C loops",
    "avx2": "AVX2+FMA+F16C: bf16 by shift/mask, int8 by vpmovsxbd + cvtdq2ps, float32 FMA",
    "avx512": "the AVX2 kernels compiled for AVX-512 (no VNNI / AVX512-BF16 dot products)",
}


cdef int _panel_rows(int64_t K, int64_t N) noexcept nogil:
    cdef int64_t nb = (_PANEL_WEIGHTS // K) // 16 * 16
    if nb < 16:
        nb = 16
    return <int>(nb if nb < N else N)


cdef int _epilogue(float[:, ::1] out, const float[::1] bias, int act, int simd, int n_threads) except -1:
    cdef const float* bp = NULL
    cdef int status = 0
    if bias is not None:
        bp = &bias[0]
    if bp != NULL or act != 0:
        with nogil:
            status = qkv_bias_act_f32(&out[0, 0], &out[0, 0], bp, out.shape[0], out.shape[1], act, simd, n_threads)
    if status != 0:
        raise ValueError(f"qkv_bias_act failed with status {status}")
    return 0


cdef _check(str name, float[:, ::1] out, const float[:, ::1] x, int64_t rows, int64_t cols, const float[::1] bias):
    if rows != out.shape[1] or x.shape[0] != out.shape[0] or cols < x.shape[1]:
        raise ValueError(f"{name}: shape mismatch: out ({out.shape[0]}, {out.shape[1]}), x ({x.shape[0]}, {x.shape[1]}), "
                         f"weight rows ({rows}, {cols})")
    if bias is not None and bias.shape[0] != out.shape[1]:
        raise ValueError(f"{name}: bias length mismatch")


def qlinear_bf16_rows(float[:, ::1] out,            # OUT (M, N)
                      const float[:, ::1] x,        # IN  (M, K)
                      const uint16_t[:, ::1] w,     # IN  (N, K) bfloat16 bit patterns
                      const float[::1] bias,        # IN  (N,) or None
                      int act, int simd, int n_threads):
    cdef int64_t M = x.shape[0], K = x.shape[1], N = w.shape[0]
    cdef int status = 0, nb, m_, nb_, k_, ldc
    cdef int64_t n0
    cdef float alpha = 1, beta = 0
    cdef float* tile
    _check("qlinear_bf16_rows", out, x, w.shape[0], w.shape[1], bias)
    if w.shape[1] != K:
        raise ValueError("qlinear_bf16_rows: weight rows must hold K values")
    if M == 0:
        return
    if M <= _SMALL_M:
        with nogil:
            status = qkv_qlinear_bf16(&out[0, 0], &x[0, 0], &w[0, 0], M, K, N, simd, n_threads)
    else:
        nb = _panel_rows(K, N)
        tile = <float*>malloc(nb * K * sizeof(float))
        if tile == NULL:
            raise MemoryError("qlinear_bf16_rows: out of memory")
        m_, k_, ldc = <int>M, <int>K, <int>N
        with nogil:
            n0 = 0
            while n0 < N and status == 0:
                nb_ = <int>(nb if nb < N - n0 else N - n0)
                status = qkv_dequant_bf16(tile, &w[n0, 0], nb_, K, simd, n_threads)
                if status == 0:
                    sgemm(b'T', b'N', &nb_, &m_, &k_, &alpha, tile, &k_, <float*>&x[0, 0], &k_, &beta,
                          &out[0, n0], &ldc)
                n0 += nb
        free(tile)
    if status == -1:
        raise MemoryError("qkv_qlinear_bf16: out of memory")
    if status != 0:
        raise ValueError(f"qkv_qlinear_bf16 failed with status {status}")
    _epilogue(out, bias, act, simd, n_threads)


def qlinear_q8_rows(float[:, ::1] out,              # OUT (M, N)
                    const float[:, ::1] x,          # IN  (M, K)
                    const int8_t[:, ::1] q,         # IN  (N, Kp) int8, Kp = ceil(K / 32) * 32
                    const uint16_t[:, ::1] s,       # IN  (N, Kp / 32) float16 scale bit patterns
                    const float[::1] bias,          # IN  (N,) or None
                    int act, int simd, int n_threads):
    cdef int64_t M = x.shape[0], K = x.shape[1], N = q.shape[0]
    cdef int64_t KB = (K + 31) // 32
    cdef int status = 0, nb, m_, nb_, k_, ldc
    cdef int64_t n0
    cdef float alpha = 1, beta = 0
    cdef float* tile
    _check("qlinear_q8_rows", out, x, q.shape[0], q.shape[1], bias)
    if q.shape[1] != KB * 32 or s.shape[0] != N or s.shape[1] != KB:
        raise ValueError(f"qlinear_q8_rows: for K = {K} the values must be (N, {KB * 32}) and the scales (N, {KB})")
    if M == 0:
        return
    if M <= _SMALL_M:
        with nogil:
            status = qkv_qlinear_q8(&out[0, 0], &x[0, 0], &q[0, 0], &s[0, 0], M, K, N, simd, n_threads)
    else:
        nb = _panel_rows(K, N)
        tile = <float*>malloc(nb * K * sizeof(float))
        if tile == NULL:
            raise MemoryError("qlinear_q8_rows: out of memory")
        m_, k_, ldc = <int>M, <int>K, <int>N
        with nogil:
            n0 = 0
            while n0 < N and status == 0:
                nb_ = <int>(nb if nb < N - n0 else N - n0)
                status = qkv_dequant_q8(tile, &q[n0, 0], &s[n0, 0], nb_, K, simd, n_threads)
                if status == 0:
                    sgemm(b'T', b'N', &nb_, &m_, &k_, &alpha, tile, &k_, <float*>&x[0, 0], &k_, &beta,
                          &out[0, n0], &ldc)
                n0 += nb
        free(tile)
    if status == -1:
        raise MemoryError("qkv_qlinear_q8: out of memory")
    if status != 0:
        raise ValueError(f"qkv_qlinear_q8 failed with status {status}")
    _epilogue(out, bias, act, simd, n_threads)


def dequant_bf16_rows(float[:, ::1] out, const uint16_t[:, ::1] w, int simd, int n_threads):
    """out (R, K) = the stored rows w (R, K) as float32 (tests; the GEMM path's conversion)."""
    if out.shape[0] != w.shape[0] or out.shape[1] != w.shape[1]:
        raise ValueError("dequant_bf16_rows: shape mismatch")
    with nogil:
        qkv_dequant_bf16(&out[0, 0], &w[0, 0], out.shape[0], out.shape[1], simd, n_threads)


def dequant_q8_rows(float[:, ::1] out, const int8_t[:, ::1] q, const uint16_t[:, ::1] s, int simd, int n_threads):
    """out (R, K) = the stored int8 rows q (R, Kp) times their scales s (R, Kp / 32), as float32."""
    cdef int64_t K = out.shape[1], KB = (out.shape[1] + 31) // 32
    if out.shape[0] != q.shape[0] or q.shape[1] != KB * 32 or s.shape[0] != q.shape[0] or s.shape[1] != KB:
        raise ValueError("dequant_q8_rows: shape mismatch")
    with nogil:
        qkv_dequant_q8(&out[0, 0], &q[0, 0], &s[0, 0], out.shape[0], K, simd, n_threads)
