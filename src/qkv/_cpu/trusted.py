"""The ``cpu`` backend's trusted entry points: the kernels of qkv.nn's inference forward, called on
arrays the model built itself.

qkv._ops.forward_kernels hands kernels(dtype) to a model's forward after checking once per pass what
the public ops check at every call that could differ (the backend in force, the dtype). Each
method calls the C kernel that qkv.<op> -> qkv._cpu.<op> reaches, with the same arguments (so the
same bits), without the argument checks and the general layout handling: the model's activations
and Scratch buffers are C-contiguous rows already. The kernels are the dtype's specialisations of
the compiled functions (no per-call dispatch on the argument types), and the SIMD level and thread
count are read once per pass. Between two weight streams of a decode step the caches are cold,
so every Python object touched costs: the fewer, the better. What the decode step does not need
(no out=, a SwiGLU epilogue, a mask, a rope into another buffer) goes to the backend function the
public op would call. The kernels still check what keeps memory safe (dtypes and shapes of the
buffers they are given, the attention strides).

Shapes: R rows, K in, N out, C width; q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D).
"""

import importlib
import math

import numpy as np

import qkv
import qkv._cpu as _be
from qkv import _rope
from qkv._cpu import _config
from qkv._cpu._activation import swiglu_rows
from qkv._cpu._attention import attention_fwd
from qkv._cpu._layernorm import layernorm_rows
from qkv._cpu._linear import linear_rows
from qkv._cpu._rmsnorm import rmsnorm_rows
from qkv._cpu._rope import rope_rows
from qkv.quant import QuantizedWeight, linear_cpu

_attention = importlib.import_module("qkv._cpu.attention")  # the module (qkv._cpu.attention is its function)
_ACT = _be.ACTIVATION_CODES
_CAUSAL = {False: 0, True: _be.CAUSAL_CODES["bottom_right"]}
_FUSED = {"linear_rows": linear_rows, "layernorm_rows": layernorm_rows, "rmsnorm_rows": rmsnorm_rows,
          "rope_rows": rope_rows, "swiglu_rows": swiglu_rows}
# dtype -> {name: the compiled function's specialisation for it}
_BY_DTYPE = {np.dtype(t): {name: f[c] for name, f in _FUSED.items()} for t, c in ((np.float32, "float"),
                                                                                   (np.float64, "double"))}
_cache = {}


def kernels(dtype):
    """The Kernels of a forward pass on arrays of this dtype (float32 or float64, checked by the caller)."""
    key = (dtype, _config.simd_level(), _config.get_num_threads())
    k = _cache.get(key)
    if k is None:
        k = _cache[key] = Kernels(*key)
    return k


class Kernels:
    """linear, layer_norm, rms_norm, rope and attention for one dtype, SIMD level and thread count."""

    def __init__(self, dtype, simd, n_threads):
        self.simd, self.nt = simd, n_threads
        f = _BY_DTYPE[dtype]
        self._linear, self._layernorm, self._rmsnorm = f["linear_rows"], f["layernorm_rows"], f["rmsnorm_rows"]
        self._rope, self._swiglu = f["rope_rows"], f["swiglu_rows"]

    def linear(self, x, weight, bias, activation, out):
        """activation(x @ weight + bias) into out (..., N); weight (K, N) float or a QuantizedWeight.
        "swiglu" ([gate | up] columns, out (..., N/2)): when the rows fit one block of
        qkv._cpu._linear_swiglu, the same GEMM into a (R, N) buffer then the same epilogue."""
        if type(weight) is QuantizedWeight:
            if activation not in _ACT:  # e.g. "swiglu": qkv.linear says what the quantized kernels take
                return qkv.linear(x, weight, bias, activation, out=out)
            return linear_cpu(x, weight, bias, activation, out)
        K, N = weight.shape
        x2 = np.ascontiguousarray(x).reshape(-1, K)  # (R, K)
        R = x2.shape[0]
        if out is None or R >= 2**31:
            return _be.linear(x, weight, bias, activation, out=out)  # allocates; or raises past the BLAS int32 range
        if activation != "swiglu":
            self._linear(out.reshape(-1, N), x2, weight, bias, _ACT[activation], self.simd, self.nt)
            return out
        if R > max(64, _be.SWIGLU_BLOCK_BYTES // (N * x.itemsize)):
            return _be.linear(x, weight, bias, activation, out=out)  # several row blocks
        t = np.empty((R, N), x.dtype)  # x @ [Wg | Wu] + b, (R, 2 * inner)
        self._linear(t, x2, weight, bias, _ACT[None], self.simd, self.nt)
        n = N // 2
        self._swiglu(out.reshape(-1, n), t[:, :n], t[:, n:], self.simd, self.nt)
        return out

    def layer_norm(self, x, weight, bias, eps, out):
        if out is None:
            return _be.layer_norm(x, weight, bias, eps)
        C = x.shape[-1]
        self._layernorm(out.reshape(-1, C), np.ascontiguousarray(x).reshape(-1, C), weight, bias, None, None, eps,
                        self.simd, self.nt)
        return out

    def rms_norm(self, x, weight, eps, out):
        if out is None:
            return _be.rms_norm(x, weight, eps)
        C = x.shape[-1]
        self._rmsnorm(out.reshape(-1, C), np.ascontiguousarray(x).reshape(-1, C), weight, None, eps, self.simd,
                      self.nt)
        return out

    def rope(self, x, positions, theta, scaling, out):
        """Rotary positions on x (B, L, H, D) (last axis contiguous); in place when out is x."""
        inv_freq = _rope.inv_freq(x.shape[3], float(theta), _rope.check_scaling("rope", scaling))
        if out is not x:
            return _be.rope(x, positions, inv_freq, out=out)
        B, L = x.shape[:2]
        pos = positions[None, :] if positions.ndim == 1 and B == 1 else positions  # (1, L) view, or (B, L)
        if pos.dtype != np.int64 or pos.shape != (B, L):
            pos = np.broadcast_to(np.asarray(positions, dtype=np.int64), (B, L))
        self._rope(x, x, pos, inv_freq, False, self.simd, self.nt)
        return x

    def attention(self, q, k, v, causal, mask, out):
        """softmax(q k^T / sqrt(D) (+ causal, mask)) v into out (B, Hq, Lq, Dv)."""
        D, Dv = q.shape[3], v.shape[3]
        scale = 1.0 / math.sqrt(D)
        if mask is not None or out is None or max(D, Dv) > _attention.MAX_HEAD_DIM:
            if mask is not None and mask.dtype.kind == "f" and mask.dtype != q.dtype:
                mask = mask.astype(q.dtype)  # as qkv._ops casts an additive mask
            return _attention.attention(q, k, v, scale, causal="bottom_right" if causal else None, mask=mask,
                                        out=out)
        attention_fwd(out, None, None, q, k, v, None, None, _be.MASK_NONE, None, _CAUSAL[causal], scale,
                      _attention.PATH_CODES[_attention._path], self.simd, self.nt)
        return out
