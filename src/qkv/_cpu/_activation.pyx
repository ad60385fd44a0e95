# Cython wrapper of csrc/activation.c: out = act(x + bias) over rows. Also cimported by _linear.pyx
# for the GEMM epilogue (see _activation.pxd).
from cython cimport floating
from libc.stdint cimport int64_t


def bias_act_rows(floating[:, ::1] out,      # OUT (R, N); may be x itself
                  const floating[:, ::1] x,  # IN  (R, N)
                  const floating[::1] bias,  # IN  (N,) or None
                  int act, int simd, int n_threads):
    cdef int64_t R = x.shape[0], N = x.shape[1]
    cdef const floating* bp = NULL
    cdef int status
    if out.shape[0] != R or out.shape[1] != N:
        raise ValueError("bias_act_rows: out shape mismatch")
    if bias is not None:
        if bias.shape[0] != N:
            raise ValueError("bias_act_rows: bias length mismatch")
        bp = &bias[0]
    if R == 0:
        return
    with nogil:
        if floating is float:
            status = qkv_bias_act_f32(&out[0, 0], &x[0, 0], bp, R, N, act, simd, n_threads)
        else:
            status = qkv_bias_act_f64(&out[0, 0], &x[0, 0], bp, R, N, act, simd, n_threads)
    if status != 0:
        raise ValueError(f"qkv_bias_act failed with status {status}")


def act_backward_rows(floating[:, ::1] dx,         # OUT (R, N)
                      const floating[:, ::1] dy,   # IN  (R, N)
                      const floating[:, ::1] x,    # IN  (R, N): the activation's input
                      int act, int simd, int n_threads):
    """dx = dy * act'(x) (qkv.gelu_backward)."""
    cdef int64_t R = x.shape[0], N = x.shape[1]
    cdef int status
    if dx.shape[0] != R or dx.shape[1] != N or dy.shape[0] != R or dy.shape[1] != N:
        raise ValueError("act_backward_rows: shape mismatch")
    if R == 0:
        return
    with nogil:
        if floating is float:
            status = qkv_act_backward_f32(&dx[0, 0], NULL, &dy[0, 0], &x[0, 0], R, N, act, simd, n_threads)
        else:
            status = qkv_act_backward_f64(&dx[0, 0], NULL, &dy[0, 0], &x[0, 0], R, N, act, simd, n_threads)
    if status != 0:
        raise ValueError(f"qkv_act_backward failed with status {status}")


def swiglu_rows(floating[:, ::1] out,       # OUT (R, N)
                const floating[:, :] gate,  # IN  (R, N), contiguous rows at any row stride
                const floating[:, :] up,    # IN  (R, N), likewise (the halves of linear's [gate | up])
                int simd, int n_threads):
    """out = silu(gate) * up (qkv.swiglu and linear's "swiglu" epilogue)."""
    cdef int64_t R = out.shape[0], N = out.shape[1]
    cdef int64_t itemsize = sizeof(floating)
    cdef int status
    if gate.shape[0] != R or gate.shape[1] != N or up.shape[0] != R or up.shape[1] != N:
        raise ValueError("swiglu_rows: shape mismatch")
    if R == 0:
        return
    if (gate.strides[1] != itemsize or up.strides[1] != itemsize or gate.strides[0] % itemsize
            or up.strides[0] % itemsize):
        raise ValueError("swiglu_rows: gate and up need contiguous rows")
    with nogil:
        if floating is float:
            status = qkv_swiglu_f32(&out[0, 0], &gate[0, 0], &up[0, 0], R, N, gate.strides[0] // itemsize,
                                    up.strides[0] // itemsize, simd, n_threads)
        else:
            status = qkv_swiglu_f64(&out[0, 0], &gate[0, 0], &up[0, 0], R, N, gate.strides[0] // itemsize,
                                    up.strides[0] // itemsize, simd, n_threads)
    if status != 0:
        raise ValueError(f"qkv_swiglu failed with status {status}")


def swiglu_backward_rows(floating[:, ::1] dgate,      # OUT (R, N)
                         floating[:, ::1] dup,        # OUT (R, N)
                         const floating[:, ::1] dy,   # IN  (R, N)
                         const floating[:, ::1] gate, # IN  (R, N)
                         const floating[:, ::1] up,   # IN  (R, N)
                         int simd, int n_threads):
    """dgate = dy * up * silu'(gate), dup = dy * silu(gate)."""
    cdef int64_t R = gate.shape[0], N = gate.shape[1]
    cdef int status
    if (dgate.shape[0] != R or dgate.shape[1] != N or dup.shape[0] != R or dup.shape[1] != N or dy.shape[0] != R
            or dy.shape[1] != N or up.shape[0] != R or up.shape[1] != N):
        raise ValueError("swiglu_backward_rows: shape mismatch")
    if R == 0:
        return
    with nogil:
        if floating is float:
            status = qkv_swiglu_backward_f32(&dgate[0, 0], &dup[0, 0], &dy[0, 0], &gate[0, 0], &up[0, 0], R, N, simd,
                                             n_threads)
        else:
            status = qkv_swiglu_backward_f64(&dgate[0, 0], &dup[0, 0], &dy[0, 0], &gate[0, 0], &up[0, 0], R, N,
                                             simd, n_threads)
    if status != 0:
        raise ValueError(f"qkv_swiglu_backward failed with status {status}")
