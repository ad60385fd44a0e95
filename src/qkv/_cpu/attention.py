"""qkv.attention and qkv.attention_backward on the ``cpu`` backend: layouts for csrc/attention.c,
then one kernel call.

The arguments come validated and normalised from qkv._ops.attention. Here q, k, v keep their
strides when the last axis is contiguous (a (B, L, H, D) array transposed to (B, H, L, D) is used
as it is); anything else is copied once. A mask becomes a base array plus one element offset per
(b, h, i) row (qkv._cpu.mask_rows), so a broadcast mask is never expanded to (B, Hq, Lq, Lk).
"""

import numpy as np

from qkv._cpu import _config
from qkv._cpu import CAUSAL_CODES, mask_rows
from qkv._cpu._attention import attention_bwd, attention_backward_path, attention_fwd, attention_path

MAX_HEAD_DIM = 256
PATH_CODES = {"auto": 0, "plain": 1, "tiled": 2, "split-k": 3}
_path = "auto"  # benchmarks and tests force a path through set_path


def set_path(name):
    """Force a kernel path ("auto", "plain", "tiled", "split-k"); one the shapes cannot use falls back."""
    global _path
    if name not in PATH_CODES:
        raise ValueError(f"set_path: name must be one of {tuple(PATH_CODES)}, got {name!r}")
    _path = name


def _strided_ok(a):
    """True if the kernel can read a as it is: last axis contiguous, strides whole elements."""
    return (a.shape[-1] == 1 or a.strides[-1] == a.itemsize) and all(s % a.itemsize == 0 for s in a.strides)


def _operand(a):
    return a if _strided_ok(a) else np.ascontiguousarray(a)


def _prepare(op, q, k, v, mask, kv_lengths):
    """What the forward and the backward kernels both take: q, k, v readable in place, the mask as
    (base, kind, row offsets) and kv_lengths as contiguous int64 (or None)."""
    B, Hq, Lq, D = q.shape
    Lk, Dv = k.shape[2], v.shape[3]
    if D > MAX_HEAD_DIM or Dv > MAX_HEAD_DIM:
        raise ValueError(f"{op}: head dims up to {MAX_HEAD_DIM} are supported on the cpu backend, got "
                         f"q {q.shape}, v {v.shape}")
    q, k, v = _operand(q), _operand(k), _operand(v)
    if mask is not None:
        mask = np.ascontiguousarray(mask)
    base, kind, off = mask_rows(mask, (B, Hq, Lq, Lk))
    if base is not None:
        base = np.ascontiguousarray(base)
    kvl = None if kv_lengths is None else np.ascontiguousarray(kv_lengths, dtype=np.int64)
    return q, k, v, base, kind, off, kvl


def attention(q, k, v, scale, causal=None, mask=None, kv_lengths=None, out=None, return_lse=False,
              return_weights=False):
    """q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) -> out (B, Hq, Lq, Dv) [, lse, weights]."""
    B, Hq, Lq, D = q.shape
    Lk, Dv = k.shape[2], v.shape[3]
    q, k, v, base, kind, off, kvl = _prepare("attention", q, k, v, mask, kv_lengths)
    dtype = q.dtype
    y = np.empty((B, Hq, Lq, Dv), dtype=dtype) if out is None else out
    lse = np.empty((B, Hq, Lq), dtype=dtype) if return_lse else None
    weights = np.empty((B, Hq, Lq, Lk), dtype=dtype) if return_weights else None
    attention_fwd(y, lse, weights, q, k, v, base, off, kind, kvl, CAUSAL_CODES[causal], float(scale),
                  PATH_CODES[_path], _config.simd_level(), _config.get_num_threads())
    result = [y]
    if return_lse:
        result.append(lse)
    if return_weights:
        result.append(weights)
    return tuple(result) if len(result) > 1 else y


def kernel_path(q_shape, k_shape, v_shape, dtype=np.float32, return_weights=False):
    """Name of the kernel path a call with these shapes would take now (for `qkv info`, benchmarks)."""
    B, Hq, Lq, D = q_shape
    shape = (B, Hq, k_shape[1], Lq, k_shape[2], D, v_shape[3])
    return attention_path(np.dtype(dtype) == np.float32, shape, bool(return_weights), PATH_CODES[_path],
                          _config.simd_level(), _config.get_num_threads())


def attention_backward(dout, q, k, v, out, lse, scale, causal=None, mask=None, kv_lengths=None, grads=None):
    """(dq, dk, dv) of attention; dout, out (B, Hq, Lq, Dv) and lse (B, Hq, Lq) from the forward;
    grads: (dq, dk, dv) destinations (C-contiguous; None entries are allocated).

    q, k, v keep their strides as in the forward; dout, out and lse are made contiguous (a copy
    only when they are not). The path ("plain" or "tiled") follows set_path.
    """
    B, Hq, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    q, k, v, base, kind, off, kvl = _prepare("attention_backward", q, k, v, mask, kv_lengths)
    dtype = q.dtype
    dout, out, lse = (np.ascontiguousarray(a, dtype=dtype) for a in (dout, out, lse))
    dq, dk, dv = (None,) * 3 if grads is None else grads
    dq = np.empty((B, Hq, Lq, D), dtype) if dq is None else dq
    dk = np.empty((B, Hkv, Lk, D), dtype) if dk is None else dk
    dv = np.empty((B, Hkv, Lk, Dv), dtype) if dv is None else dv
    attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, base, off, kind, kvl, CAUSAL_CODES[causal], float(scale),
                  PATH_CODES[_path], _config.simd_level(), _config.get_num_threads())
    return dq, dk, dv


def backward_kernel_path(q_shape, k_shape, v_shape, dtype=np.float32):
    """Name of the path a backward call with these shapes would take now (benchmarks)."""
    B, Hq, Lq, D = q_shape
    shape = (B, Hq, k_shape[1], Lq, k_shape[2], D, v_shape[3])
    return attention_backward_path(np.dtype(dtype) == np.float32, shape, PATH_CODES[_path], _config.simd_level())
