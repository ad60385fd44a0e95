"""The ``cpu`` backend: compiled C kernels (csrc/) through Cython, on NumPy arrays.

Each function takes arguments already validated by qkv._ops, makes the layouts the kernels need
(C-contiguous rows; no copy when the input already is), allocates the result (or fills ``out``),
and calls the kernel with the GIL released, on ``qkv.get_num_threads()`` threads at
``qkv._config.simd_level()``.
"""

import numpy as np

from qkv import _config
from qkv._cpu._activation import bias_act_rows
from qkv._cpu._layernorm import layernorm_rows
from qkv._cpu._linear import linear_rows
from qkv._cpu._softmax import softmax_rows

NAME = "cpu"
ARRAY_KIND = "numpy"
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

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


def layer_norm(x, weight=None, bias=None, eps=1e-5, out=None):
    y = _result(out, x.shape, x.dtype)
    w = None if weight is None else np.ascontiguousarray(weight)
    b = None if bias is None else np.ascontiguousarray(bias)
    layernorm_rows(y.reshape(-1, x.shape[-1]), _rows(x), w, b, eps, _config.simd_level(), _config.get_num_threads())
    return y


def gelu(x, approximate="tanh", out=None):
    y = _result(out, x.shape, x.dtype)
    act = ACTIVATION_CODES["gelu_tanh" if approximate == "tanh" else "gelu"]
    n = x.shape[-1] if x.ndim else 1
    bias_act_rows(y.reshape(-1, n), _rows(x.reshape(-1, n)), None, act, _config.simd_level(),
                  _config.get_num_threads())
    return y


def linear(x, weight, bias=None, activation=None, out=None):
    if max(x.size // x.shape[-1], weight.shape[0], weight.shape[1]) >= 2**31:
        raise ValueError(f"linear: dimensions of x {x.shape} / weight {weight.shape} exceed the BLAS int32 range")
    w = weight
    if not (w.flags.c_contiguous or w.flags.f_contiguous):
        w = np.ascontiguousarray(w)
    b = None if bias is None else np.ascontiguousarray(bias)
    y = _result(out, x.shape[:-1] + (weight.shape[1],), x.dtype)
    linear_rows(y.reshape(-1, weight.shape[1]), _rows(x), w, b, ACTIVATION_CODES[activation],
                _config.simd_level(), _config.get_num_threads())
    return y


from qkv._cpu.attention import attention  # noqa: E402
