"""The ``cpu`` backend: compiled C kernels (csrc/) through Cython, on NumPy arrays.

Each function takes arguments already validated by qkv._ops, makes the layouts the kernels need
(C-contiguous rows; no copy when the input already is), allocates the result (or fills ``out``),
and calls the kernel with the GIL released, on ``qkv.get_num_threads()`` threads at
``qkv._cpu._config.simd_level()``.
"""

import numpy as np

from qkv._cpu import _config
from qkv._cpu._activation import act_backward_rows, bias_act_rows, swiglu_backward_rows, swiglu_rows
from qkv._cpu._embedding import embedding_backward_rows
from qkv._cpu._layernorm import layernorm_backward_rows, layernorm_rows
from qkv._cpu._rmsnorm import rmsnorm_backward_rows, rmsnorm_rows
from qkv._cpu._rope import rope_rows
from qkv._cpu._linear import linear_backward_rows, linear_rows
from qkv._cpu._softmax import cross_entropy_rows, softmax_backward_rows, softmax_rows

NAME = "cpu"
ARRAY_KIND = "numpy"
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
BACKWARD_OUT = True  # the backward ops write into the caller's out= (qkv._ops._backward)

CAUSAL_CODES = {None: 0, "bottom_right": 1, "top_left": 2}
MASK_NONE, MASK_BOOL, MASK_ADD = 0, 1, 2
ACTIVATION_CODES = {None: 0, "gelu_tanh": 1, "gelu": 2, "relu": 3}


def available():
    return True, None


def _rows(x):
    """x as a C-contiguous (R, N) array (a copy only if x is not already contiguous)."""
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1])


def _result(out, shape, dtype):
    return np.empty(shape, dtype=dtype) if out is None else out


def mask_rows(mask, shape):
    """A mask broadcastable to ``shape`` as (base array, kind, row offsets) for the C kernels.

    The C side reads row r of the broadcast mask at ``base.data + offsets[r]`` (in elements) with
    contiguous columns. Broadcasting over leading axes costs nothing (offsets repeat); only a mask
    whose last axis is not contiguous (e.g. broadcast along keys) is materialised along that axis.
    """
    if mask is None:
        return None, MASK_NONE, None
    if mask.ndim == 0:
        mask = mask.reshape(1)
    n = shape[-1]
    if mask.strides[-1] != mask.itemsize or mask.shape[-1] != n or any(s % mask.itemsize for s in mask.strides):
        mask = np.ascontiguousarray(np.broadcast_to(mask, mask.shape[:-1] + (n,)))
    kind = MASK_BOOL if mask.dtype == np.bool_ else MASK_ADD
    if kind == MASK_BOOL:
        mask = mask.view(np.uint8)
    mb = np.broadcast_to(mask, shape)
    lead = mb.shape[:-1]
    off = np.zeros(lead, dtype=np.int64)
    for d, (size, stride) in enumerate(zip(lead, mb.strides[:-1])):
        if stride and size > 1:
            step = np.arange(size, dtype=np.int64) * (stride // mb.itemsize)
            off += step.reshape((size,) + (1,) * (len(lead) - d - 1))
    return mask, kind, np.ascontiguousarray(off.reshape(-1))


def softmax(x, mask=None, causal=None, scale=1.0, out=None):
    y = _result(out, x.shape, x.dtype)
    base, kind, off = mask_rows(mask, x.shape)
    M = x.shape[-2] if x.ndim >= 2 else 1
    softmax_rows(y.reshape(-1, x.shape[-1]), _rows(x), base, off, kind, M, CAUSAL_CODES[causal], scale,
                 _config.simd_level(), _config.get_num_threads())
    return y


def layer_norm(x, weight=None, bias=None, eps=1e-5, out=None, return_stats=False):
    y = _result(out, x.shape, x.dtype)
    w = None if weight is None else np.ascontiguousarray(weight)
    b = None if bias is None else np.ascontiguousarray(bias)
    mean = np.empty(x.shape[:-1], x.dtype) if return_stats else None  # stats in x's dtype (float32/float64)
    rstd = np.empty(x.shape[:-1], x.dtype) if return_stats else None
    layernorm_rows(y.reshape(-1, x.shape[-1]), _rows(x), w, b, None if mean is None else mean.reshape(-1),
                   None if rstd is None else rstd.reshape(-1), eps, _config.simd_level(), _config.get_num_threads())
    return (y, mean, rstd) if return_stats else y


def gelu(x, approximate="tanh", out=None):
    y = _result(out, x.shape, x.dtype)
    act = ACTIVATION_CODES["gelu_tanh" if approximate == "tanh" else "gelu"]
    n = x.shape[-1] if x.ndim else 1
    bias_act_rows(y.reshape(-1, n), _rows(x.reshape(-1, n)), None, act, _config.simd_level(),
                  _config.get_num_threads())
    return y


def linear(x, weight, bias=None, activation=None, out=None, return_preact=False):
    if max(x.size // x.shape[-1], weight.shape[0], weight.shape[1]) >= 2**31:
        raise ValueError(f"linear: dimensions of x {x.shape} / weight {weight.shape} exceed the BLAS int32 range")
    if activation == "swiglu":
        return _linear_swiglu(x, weight, bias, out, return_preact)
    w = weight
    if not (w.flags.c_contiguous or w.flags.f_contiguous):
        w = np.ascontiguousarray(w)
    b = None if bias is None else np.ascontiguousarray(bias)
    y = _result(out, x.shape[:-1] + (weight.shape[1],), x.dtype)
    if return_preact and activation is not None:
        # the GEMM + bias into preact, then the activation from it: one more pass, no copy of x@W
        pre = np.empty(y.shape, x.dtype)
        linear_rows(pre.reshape(-1, weight.shape[1]), _rows(x), w, b, ACTIVATION_CODES[None],
                    _config.simd_level(), _config.get_num_threads())
        bias_act_rows(y.reshape(-1, weight.shape[1]), pre.reshape(-1, weight.shape[1]), None,
                      ACTIVATION_CODES[activation], _config.simd_level(), _config.get_num_threads())
        return y, pre
    linear_rows(y.reshape(-1, weight.shape[1]), _rows(x), w, b, ACTIVATION_CODES[activation],
                _config.simd_level(), _config.get_num_threads())
    return (y, y) if return_preact else y



# ---------------------------------------------------------------------------------------------
# backward ops (arguments validated by qkv._ops); results go to out= (a tuple whose None entries,
# like a missing out, mean fresh C-contiguous arrays)


def _outs(out, n):
    return (None,) * n if out is None else out


def layer_norm_backward(dy, x, weight=None, bias=None, eps=1e-5, mean=None, rstd=None, out=None):
    C = x.shape[-1]
    dx, dw, db = _outs(out, 3)
    dx = _result(dx, x.shape, x.dtype)
    dw = None if weight is None else _result(dw, C, x.dtype)
    db = None if bias is None else _result(db, C, x.dtype)
    w = None if weight is None else np.ascontiguousarray(weight)
    m = None if mean is None else np.ascontiguousarray(mean, dtype=x.dtype).reshape(-1)
    r = None if rstd is None else np.ascontiguousarray(rstd, dtype=x.dtype).reshape(-1)
    layernorm_backward_rows(dx.reshape(-1, C), dw, db, _rows(dy), _rows(x), w, m, r, eps, _config.simd_level(),
                            _config.get_num_threads())
    return dx, dw, db


def gelu_backward(dy, x, approximate="tanh", out=None):
    dx = _result(out, x.shape, x.dtype)
    n = x.shape[-1] if x.ndim else 1
    act = ACTIVATION_CODES["gelu_tanh" if approximate == "tanh" else "gelu"]
    act_backward_rows(dx.reshape(-1, n), _rows(dy.reshape(-1, n)), _rows(x.reshape(-1, n)), act,
                      _config.simd_level(), _config.get_num_threads())
    return dx


def softmax_backward(dy, y, scale=1.0):
    dx = np.empty(y.shape, y.dtype)
    n = y.shape[-1]
    softmax_backward_rows(dx.reshape(-1, n), _rows(dy), _rows(y), scale, _config.simd_level(),
                          _config.get_num_threads())
    return dx


def linear_backward(dy, x, weight, bias=None, activation=None, preact=None, out=None, work=None):
    K, N = weight.shape
    if max(x.size // K, K, N) >= 2**31:
        raise ValueError(f"linear_backward: dimensions of x {x.shape} / weight {weight.shape} exceed the BLAS "
                         "int32 range")
    w = weight
    if not (w.flags.c_contiguous or w.flags.f_contiguous):
        w = np.ascontiguousarray(w)
    fortran = w.flags.f_contiguous and not w.flags.c_contiguous
    dx, dw, db = _outs(out, 3)
    dx = _result(dx, x.shape, x.dtype)
    dw = np.empty((K, N), x.dtype, order="F" if fortran else "C") if dw is None else dw
    db = None if bias is None else _result(db, N, x.dtype)
    act = ACTIVATION_CODES[activation]
    g = None  # dy * act'(preact), (M, N)
    if act:
        g = np.empty((dx.size // K, N), x.dtype) if work is None else work.reshape(-1, N)
    pre = None if preact is None else _rows(preact)
    linear_backward_rows(dx.reshape(-1, K), dw, db, g, _rows(dy), _rows(x), w, pre, act, _config.simd_level(),
                         _config.get_num_threads())
    return dx, dw, db


def embedding_backward(dout, ids, num_embeddings, out=None):
    C = dout.shape[-1]
    dtable = _result(out, (num_embeddings, C), dout.dtype)
    embedding_backward_rows(dtable, _rows(dout), np.ascontiguousarray(ids, dtype=np.int64).reshape(-1),
                            _config.simd_level(), _config.get_num_threads())
    return dtable


def cross_entropy(logits, targets, ignore_index=-1, return_grad=False, out=None):
    """out (with return_grad) may be logits itself: each row's gradient replaces its logits."""
    V = logits.shape[-1]
    t = np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)
    n_valid = int(np.count_nonzero(t != ignore_index))
    losses = np.empty(t.shape[0], np.float64)  # per row; summed below in a fixed order
    dx = _result(out, logits.shape, logits.dtype) if return_grad else None
    cross_entropy_rows(_rows(logits), t, losses, None if dx is None else dx.reshape(-1, V), ignore_index,
                       1.0 / max(n_valid, 1), _config.simd_level(), _config.get_num_threads())
    loss = np.asarray(losses.sum() / max(n_valid, 1), dtype=np.float64 if logits.dtype == np.float64 else np.float32)
    return (loss, dx) if return_grad else loss


from qkv._cpu.attention import attention, attention_backward  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Llama-family ops (arguments validated by qkv._ops): csrc/rmsnorm.c, csrc/rope.c and the SwiGLU
# rows of csrc/activation.c


def rms_norm(x, weight=None, eps=1e-6, out=None, return_stats=False):
    y = _result(out, x.shape, x.dtype)
    w = None if weight is None else np.ascontiguousarray(weight)
    rstd = np.empty(x.shape[:-1], x.dtype) if return_stats else None  # in x's dtype (float32/float64)
    rmsnorm_rows(y.reshape(-1, x.shape[-1]), _rows(x), w, None if rstd is None else rstd.reshape(-1), eps,
                 _config.simd_level(), _config.get_num_threads())
    return (y, rstd) if return_stats else y


def rms_norm_backward(dy, x, weight=None, rstd=None, eps=1e-6, out=None):
    C = x.shape[-1]
    dx, dw = _outs(out, 2)
    dx = _result(dx, x.shape, x.dtype)
    dw = None if weight is None else _result(dw, C, x.dtype)
    w = None if weight is None else np.ascontiguousarray(weight)
    r = None if rstd is None else np.ascontiguousarray(rstd, dtype=x.dtype).reshape(-1)
    rmsnorm_backward_rows(dx.reshape(-1, C), dw, _rows(dy), _rows(x), w, r, eps, _config.simd_level(),
                          _config.get_num_threads())
    return dx, dw


def _last_axis_contiguous(a):
    """a itself when its last axis is contiguous and its strides whole elements, else a copy."""
    if a.strides[-1] == a.itemsize and all(s % a.itemsize == 0 for s in a.strides):
        return a
    return np.ascontiguousarray(a)


def rope(x, positions, inv_freq, out=None, inverse=False):
    """x (B, L, H, D) read at its own strides (last axis contiguous); out=x rotates in place."""
    B, L = x.shape[:2]
    src = _last_axis_contiguous(x)
    y = np.empty(x.shape, x.dtype) if out is None else out
    dst = y if y.strides[-1] == y.itemsize else np.empty(x.shape, x.dtype)
    pos = np.broadcast_to(np.asarray(positions, dtype=np.int64), (B, L))  # (L,) rows: stride 0, no copy
    rope_rows(dst, src, pos, np.ascontiguousarray(inv_freq, dtype=np.float64), bool(inverse), _config.simd_level(),
              _config.get_num_threads())
    if dst is not y:
        y[...] = dst
    return y


def swiglu(gate, up, out=None):
    y = _result(out, gate.shape, gate.dtype)
    n = gate.shape[-1] if gate.ndim else 1
    swiglu_rows(y.reshape(-1, n), _rows(gate.reshape(-1, n)), _rows(up.reshape(-1, n)), _config.simd_level(),
                _config.get_num_threads())
    return y


def swiglu_backward(dy, gate, up, out=None):
    dg, du = _outs(out, 2)
    dg, du = _result(dg, gate.shape, gate.dtype), _result(du, gate.shape, gate.dtype)
    n = gate.shape[-1] if gate.ndim else 1
    swiglu_backward_rows(dg.reshape(-1, n), du.reshape(-1, n), _rows(dy.reshape(-1, n)), _rows(gate.reshape(-1, n)),
                         _rows(up.reshape(-1, n)), _config.simd_level(), _config.get_num_threads())
    return dg, du


# linear(..., activation="swiglu"): rows per GEMM block, so the block's (rows, 2 * inner) product
# (about this many bytes) is still in cache when the SwiGLU epilogue reads it. 16 MiB, not 1: on the
# 2-core EPYC with passive waits, 1 MiB (85-row blocks at 2 * inner = 3072) made each block a small
# GEMM that wakes the BLAS threads again: (512, 576) @ (576, 3072) took 528 ms against 176 ms with
# one block, and 164 ms without the epilogue (benchmarks/llama_cpu.py's MLP shape).
SWIGLU_BLOCK_BYTES = 16 << 20


def _linear_swiglu(x, weight, bias, out, return_preact):
    """silu(x @ Wg + bg) * (x @ Wu + bu), weight (K, 2N) = [gate | up]. The GEMM runs over blocks
    of rows into one (rows, 2N) buffer and the SwiGLU epilogue reads it while it is warm: the
    (R, 2N) intermediate is written and read once, and never exists whole. With return_preact
    (training) the whole (R, 2N) preact is kept and returned instead."""
    K, N2 = weight.shape
    N = N2 // 2
    w = weight if (weight.flags.c_contiguous or weight.flags.f_contiguous) else np.ascontiguousarray(weight)
    b = None if bias is None else np.ascontiguousarray(bias)
    x2 = _rows(x)                                        # (R, K)
    R = x2.shape[0]
    y = _result(out, x.shape[:-1] + (N,), x.dtype)
    y2 = y.reshape(-1, N)                                # (R, N)
    simd, nt = _config.simd_level(), _config.get_num_threads()
    if return_preact:
        pre = np.empty(x.shape[:-1] + (N2,), x.dtype)
        p2 = pre.reshape(-1, N2)                         # (R, 2N)
        linear_rows(p2, x2, w, b, ACTIVATION_CODES[None], simd, nt)
        _swiglu_into(y2, p2[:, :N], p2[:, N:])
        return y, pre
    rb = min(R, max(64, SWIGLU_BLOCK_BYTES // (N2 * x.itemsize)))
    buf = np.empty((rb, N2), x.dtype)
    for r0 in range(0, R, rb):
        r1 = min(R, r0 + rb)
        t = buf[: r1 - r0]                               # (rows, 2N)
        linear_rows(t, x2[r0:r1], w, b, ACTIVATION_CODES[None], simd, nt)
        _swiglu_into(y2[r0:r1], t[:, :N], t[:, N:])
    return y


def _swiglu_into(y, gate, up):
    """y (R, N) C-contiguous = silu(gate) * up, gate and up (R, N) views with contiguous rows."""
    swiglu_rows(y, gate, up, _config.simd_level(), _config.get_num_threads())
