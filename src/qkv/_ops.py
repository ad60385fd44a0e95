"""The public functional API: validate once, pick the backend, call it.

Every op here
1. checks its arguments (types, ndim, shapes, dtypes, mask shapes) and raises ValueError/TypeError
   naming the argument and the shapes involved;
2. normalises them (softmax axis moved last, causal as None/"bottom_right"/"top_left", default
   scale 1/sqrt(D), masks cast to the scores' dtype);
3. asks qkv._backend for the backend that matches the arrays (or the one forced by
   set_backend/use_backend) and calls it. Backends receive validated arguments only.
Inputs are never modified; results are fresh arrays unless ``out=`` is given.
"""

import math
import numbers

from qkv import _backend

_CAUSAL = {False: None, None: None, True: "bottom_right", "bottom_right": "bottom_right", "top_left": "top_left"}
_ACTIVATIONS = (None, "gelu_tanh", "gelu", "relu")


# ---------------------------------------------------------------------------------------------
# argument checks


def _shape(a):
    return tuple(a.shape)


def _check_float(op, name, a, backend):
    if a.dtype not in backend.DTYPES:
        kinds = ", ".join(str(d) for d in backend.DTYPES)
        raise TypeError(f"{op}: {name} has dtype {a.dtype}; backend {backend.NAME!r} supports {kinds}")


def _check_nonempty(op, name, a):
    if a.size == 0:
        raise ValueError(f"{op}: {name} has an empty dimension, shape {_shape(a)}")


def _check_same_dtype(op, ref_name, ref, others):
    for name, a in others.items():
        if a is not None and a.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} has dtype {a.dtype} but {ref_name} has dtype {ref.dtype}")


def _broadcastable(shape, target):
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))


def _check_mask(op, mask, target_shape, backend, score_dtype, target_desc):
    """A bool or floating mask broadcastable to target_shape; floating masks are cast to score_dtype."""
    if mask is None:
        return None
    if _backend.array_kind(mask) is None:
        raise TypeError(f"{op}: mask must be an array, got {type(mask).__name__}")
    kind = mask.dtype.kind
    if mask.dtype in backend.DTYPES:  # e.g. bfloat16 (kind "V") on the cuda backend
        kind = "f"
    if kind not in "bf":
        raise TypeError(f"{op}: mask must be boolean (True = keep) or floating (additive), got dtype {mask.dtype}")
    if not _broadcastable(_shape(mask), target_shape):
        raise ValueError(f"{op}: mask of shape {_shape(mask)} does not broadcast to {target_desc} {target_shape}")
    if kind == "f" and mask.dtype != score_dtype:
        mask = mask.astype(score_dtype)
    return mask


def _check_causal(op, causal):
    try:
        return _CAUSAL[causal]
    except (KeyError, TypeError):
        raise ValueError(f"{op}: causal must be False, True, 'bottom_right' or 'top_left', got {causal!r}") from None


def _check_scalar(op, name, value, positive=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{op}: {name} must be a finite real number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{op}: {name} must be > 0, got {value!r}")
    return float(value)


def _check_out(op, out, shape, dtype, inputs):
    if out is None:
        return None
    if _backend.array_kind(out) is None:
        raise TypeError(f"{op}: out must be an array, got {type(out).__name__}")
    if _shape(out) != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"{op}: out has shape {_shape(out)} and dtype {out.dtype}; expected {tuple(shape)} {dtype}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{op}: out must be C-contiguous and writeable")
    xp = _namespace(out)
    for name, a in inputs.items():
        if a is not None and xp.shares_memory(out, a):
            raise ValueError(f"{op}: out overlaps the input {name}; pass a separate buffer")
    return out


def _namespace(a):
    if _backend.array_kind(a) == "cupy":
        import cupy

        return cupy
    import numpy

    return numpy


# ---------------------------------------------------------------------------------------------
# ops


def softmax(x, axis=-1, *, mask=None, causal=False, scale=1.0, out=None):
    """Numerically stable softmax of ``scale * x`` along ``axis``, with optional masks.

    Parameters
    ----------
    x : array (..., N), float
        Scores.
    axis : int
        Axis to normalise over (default the last).
    mask : array, optional
        Boolean (True = keep) or floating (added to the scaled scores; -inf masks), broadcastable to
        ``x`` (with ``axis`` moved last).
    causal : bool or {"bottom_right", "top_left"}
        Causal mask over the last two axes (queries, keys); ``True`` is ``"bottom_right"``.
    scale : float
        Multiplies ``x`` before masking.
    out : array, optional
        Destination, same shape and dtype as ``x`` (only when ``axis`` is the last axis).

    Masked entries are exactly 0; a row with nothing visible is all zeros, never NaN.
    """
    op = "softmax"
    be = _backend.select(op, {"x": x, "mask": mask, "out": out})
    _check_float(op, "x", x, be)
    if x.ndim == 0:
        raise ValueError(f"{op}: x must have at least 1 dimension, got a scalar")
    _check_nonempty(op, "x", x)
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis {axis!r} is out of range for x of shape {_shape(x)}")
    axis = int(axis) % x.ndim
    causal = _check_causal(op, causal)
    if causal is not None and x.ndim < 2:
        raise ValueError(f"{op}: causal needs x with at least 2 dims (queries, keys), got shape {_shape(x)}")
    scale = _check_scalar(op, "scale", scale)
    moved = axis != x.ndim - 1
    if moved:
        if out is not None:
            raise ValueError(f"{op}: out= is only supported for axis=-1")
        xp = _namespace(x)
        x = xp.moveaxis(x, axis, -1)
    mask = _check_mask(op, mask, _shape(x), be, x.dtype, "x (softmax axis last), shape")
    out = _check_out(op, out, x.shape, x.dtype, {"x": x, "mask": mask})
    y = be.softmax(x, mask=mask, causal=causal, scale=scale, out=out)
    if moved:
        y = _namespace(y).moveaxis(y, -1, axis)
    return y


def layer_norm(x, weight=None, bias=None, eps=1e-5, *, out=None):
    """Layer norm over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    x is (..., C); weight and bias are (C,) or None; the variance is the biased one.
    """
    op = "layer_norm"
    be = _backend.select(op, {"x": x, "weight": weight, "bias": bias, "out": out})
    _check_float(op, "x", x, be)
    if x.ndim == 0:
        raise ValueError(f"{op}: x must have at least 1 dimension, got a scalar")
    _check_nonempty(op, "x", x)
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and _shape(p) != (C,):
            raise ValueError(f"{op}: {name} must have shape ({C},) to match x of shape {_shape(x)}, got {_shape(p)}")
    _check_same_dtype(op, "x", x, {"weight": weight, "bias": bias})
    eps = _check_scalar(op, "eps", eps)
    if eps < 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")
    out = _check_out(op, out, x.shape, x.dtype, {"x": x, "weight": weight, "bias": bias})
    return be.layer_norm(x, weight, bias, eps, out=out)


def gelu(x, approximate="tanh", *, out=None):
    """GELU, ``approximate="tanh"`` (GPT-2's) or ``"none"`` (exact, with erf; BERT's)."""
    op = "gelu"
    be = _backend.select(op, {"x": x, "out": out})
    _check_float(op, "x", x, be)
    if approximate not in ("tanh", "none"):
        raise ValueError(f"{op}: approximate must be 'tanh' or 'none', got {approximate!r}")
    _check_nonempty(op, "x", x)
    out = _check_out(op, out, x.shape, x.dtype, {"x": x})
    return be.gelu(x, approximate, out=out)


def linear(x, weight, bias=None, activation=None, *, out=None):
    """``activation(x @ weight + bias)`` with ``weight`` of shape (in, out).

    x is (..., in); bias is (out,) or None; activation is None, "gelu_tanh", "gelu" (erf) or
    "relu". The bias and activation run in the GEMM's epilogue. ``weight`` may be any
    row- or column-contiguous (in, out) array, e.g. ``W.T`` of a PyTorch (out, in) weight, at no copy.
    """
    op = "linear"
    be = _backend.select(op, {"x": x, "weight": weight, "bias": bias, "out": out})
    _check_float(op, "x", x, be)
    if x.ndim == 0:
        raise ValueError(f"{op}: x must have at least 1 dimension, got a scalar")
    if weight.ndim != 2:
        raise ValueError(f"{op}: weight must be 2-D (in, out), got shape {_shape(weight)}")
    if x.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"{op}: x of shape {_shape(x)} has {x.shape[-1]} features but weight of shape "
            f"{_shape(weight)} expects {weight.shape[0]} (weight is (in, out))"
        )
    if bias is not None and _shape(bias) != (weight.shape[1],):
        raise ValueError(f"{op}: bias must have shape ({weight.shape[1]},), got {_shape(bias)}")
    _check_same_dtype(op, "x", x, {"weight": weight, "bias": bias})
    _check_nonempty(op, "x", x)
    _check_nonempty(op, "weight", weight)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    out = _check_out(op, out, x.shape[:-1] + (weight.shape[1],), x.dtype, {"x": x, "weight": weight, "bias": bias})
    return be.linear(x, weight, bias, activation, out=out)


def mlp(x, w1, b1, w2, b2, activation="gelu_tanh"):
    """The transformer MLP: ``linear(activation(linear(x, w1, b1)), w2, b2)``.

    x (..., C), w1 (C, H), b1 (H,) or None, w2 (H, C_out), b2 (C_out,) or None.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"mlp: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    h = linear(x, w1, b1, activation)
    return linear(h, w2, b2)


def attention(q, k, v, *, causal=False, mask=None, kv_lengths=None, scale=None, return_lse=False,
              return_weights=False, out=None):
    """Scaled dot-product attention, ``softmax(scale * q k^T + mask) v``, fused.

    Parameters
    ----------
    q : (B, Hq, Lq, D)
    k : (B, Hkv, Lk, D), with Hq % Hkv == 0 (MHA, GQA, MQA)
    v : (B, Hkv, Lk, Dv)
    causal : False, True (== "bottom_right": query i sees keys j <= i + Lk - Lq) or "top_left" (j <= i)
    mask : bool (True = attend) or float (added to the scores) array broadcastable to (B, Hq, Lq, Lk)
    kv_lengths : int array (B,): row b has kv_lengths[b] keys, those at positions >= kv_lengths[b]
        are masked (padded batches, KV caches of different lengths). With causal bottom-right the
        diagonal sits at each row's length, as in FlashAttention's kv cache: query i of row b sees
        keys j <= i + kv_lengths[b] - Lq (the last query sees the row's last key; with Lq >
        kv_lengths[b] the first queries see none). "top_left" stays j <= i (and j < kv_lengths[b]),
        what a right-padded batch of sequences attending to themselves needs.
    scale : float, default 1/sqrt(D)
    return_lse : also return the log-sum-exp of the scores, (B, Hq, Lq)
    return_weights : also return the attention weights (B, Hq, Lq, Lk) (materialised, for inspection)
    out : optional (B, Hq, Lq, Dv) destination

    Returns ``out`` (B, Hq, Lq, Dv), or a tuple ``(out, lse?, weights?)`` when asked. A query that
    sees no key gets zeros (lse = -inf); masked keys never influence the output, even if they hold
    NaN or Inf. Views whose last axis is contiguous are used without a copy.
    """
    op = "attention"
    be = _backend.select(op, {"q": q, "k": k, "v": v, "mask": mask, "kv_lengths": kv_lengths, "out": out})
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim != 4:
            raise ValueError(f"{op}: {name} must be 4-D (B, H, L, D), got shape {_shape(a)}")
        _check_float(op, name, a, be)
        _check_nonempty(op, name, a)
    _check_same_dtype(op, "q", q, {"k": k, "v": v})
    B, Hq, Lq, D = q.shape
    _, Hkv, Lk, Dk = k.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"{op}: batch sizes differ: q {_shape(q)}, k {_shape(k)}, v {_shape(v)}")
    if Dk != D:
        raise ValueError(f"{op}: q and k head dims differ: q {_shape(q)}, k {_shape(k)}")
    if v.shape[1] != Hkv or v.shape[2] != Lk:
        raise ValueError(f"{op}: k and v must agree on (B, H, L): k {_shape(k)}, v {_shape(v)}")
    if Hq % Hkv:
        raise ValueError(f"{op}: q heads ({Hq}) must be a multiple of k/v heads ({Hkv}): q {_shape(q)}, k {_shape(k)}")
    causal = _check_causal(op, causal)
    scale = 1.0 / math.sqrt(D) if scale is None else _check_scalar(op, "scale", scale)
    mask = _check_mask(op, mask, (B, Hq, Lq, Lk), be, q.dtype, "scores (B, Hq, Lq, Lk) =")
    if kv_lengths is not None:
        if _backend.array_kind(kv_lengths) is None:
            raise TypeError(f"{op}: kv_lengths must be an integer array of shape ({B},)")
        if kv_lengths.dtype.kind not in "iu":
            raise TypeError(f"{op}: kv_lengths must be integers, got dtype {kv_lengths.dtype}")
        if _shape(kv_lengths) != (B,):
            raise ValueError(f"{op}: kv_lengths must have shape ({B},) for q of shape {_shape(q)}, got {_shape(kv_lengths)}")
        if int(kv_lengths.min()) < 0 or int(kv_lengths.max()) > Lk:
            raise ValueError(f"{op}: kv_lengths must lie in [0, {Lk}] (Lk), got min {int(kv_lengths.min())} "
                             f"max {int(kv_lengths.max())}")
    out = _check_out(op, out, (B, Hq, Lq, v.shape[3]), q.dtype,
                     {"q": q, "k": k, "v": v, "mask": mask, "kv_lengths": kv_lengths})
    return be.attention(q, k, v, scale, causal=causal, mask=mask, kv_lengths=kv_lengths, out=out,
                        return_lse=bool(return_lse), return_weights=bool(return_weights))
