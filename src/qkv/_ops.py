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
from qkv.quant import QuantizedWeight

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
    if type(value) is float and math.isfinite(value) and (value > 0 or not positive):  # the common case, fast
        return value
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


def _check_layer_norm_args(op, be, x, weight, bias, eps):
    """x (..., C) floating and non-empty, weight/bias (C,) or None of x's dtype, eps >= 0 -> eps."""
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
    return eps


def layer_norm(x, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    """Layer norm over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    x is (..., C); weight and bias are (C,) or None; the variance is the biased one.
    ``return_stats=True`` returns ``(y, mean, rstd)`` with mean and rstd = 1/sqrt(var + eps) of
    shape x.shape[:-1] (float64 for float64 x, else float32), what layer_norm_backward reuses.
    """
    op = "layer_norm"
    be = _backend.select(op, {"x": x, "weight": weight, "bias": bias, "out": out})
    eps = _check_layer_norm_args(op, be, x, weight, bias, eps)
    out = _check_out(op, out, x.shape, x.dtype, {"x": x, "weight": weight, "bias": bias})
    if return_stats:
        return be.layer_norm(x, weight, bias, eps, out=out, return_stats=True)
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


def linear(x, weight, bias=None, activation=None, *, out=None, return_preact=False):
    """``activation(x @ weight + bias)`` with ``weight`` of shape (in, out).

    x is (..., in); bias is (out,) or None; activation is None, "gelu_tanh", "gelu" (erf),
    "relu" or "swiglu": then weight's columns are [gate | up] (out = 2 * inner) and the result is
    silu(gate) * up, (..., inner), the Llama MLP's first half with its (rows, 2 * inner)
    intermediate read once. The bias and activation run in the GEMM's epilogue. ``weight`` may be any
    row- or column-contiguous (in, out) array, e.g. ``W.T`` of a PyTorch (out, in) weight, at no copy.
    ``return_preact=True`` returns ``(y, preact)``, preact = x @ weight + bias (what
    linear_backward needs for the activation's derivative); without an activation it is y itself.
    """
    op = "linear"
    if isinstance(weight, QuantizedWeight):
        return _linear_quantized(x, weight, bias, activation, out, return_preact)
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
    if activation not in _ACTIVATIONS + ("swiglu",):
        raise ValueError(f"{op}: activation must be one of {_ACTIVATIONS + ('swiglu',)}, got {activation!r}")
    n_out = _linear_out_features(op, weight, activation)
    out = _check_out(op, out, x.shape[:-1] + (n_out,), x.dtype, {"x": x, "weight": weight, "bias": bias})
    if return_preact:
        return be.linear(x, weight, bias, activation, out=out, return_preact=True)
    return be.linear(x, weight, bias, activation, out=out)


def _linear_quantized(x, weight, bias, activation, out, return_preact):
    """linear with a qkv.QuantizedWeight (qkv/quant.py): float32 x, bias and out, on ``cpu``
    (csrc/quant.c) or ``numpy`` (the reference dequantises and computes in float64)."""
    op = "linear"
    be = _backend.select(op, {"x": x, "bias": bias, "out": out})
    if be.NAME not in ("cpu", "numpy"):
        raise TypeError(f"{op}: weight is a QuantizedWeight, which runs on the 'cpu' and 'numpy' backends, "
                        f"not {be.NAME!r}")
    if weight.axis != 0:
        raise TypeError(f"{op}: weight is a QuantizedWeight of shape {weight.shape} with its blocks along axis 1 "
                        "(a transposed view); linear needs blocks along in (axis 0)")
    if return_preact:
        raise TypeError(f"{op}: return_preact is for training and needs a float weight, not a QuantizedWeight")
    for name, a in (("x", x), ("bias", bias), ("out", out)):
        if a is not None and a.dtype != "float32":
            raise TypeError(f"{op}: {name} must be float32 with a QuantizedWeight, got {a.dtype}")
    if x.ndim == 0 or x.shape[-1] != weight.shape[0]:
        raise ValueError(f"{op}: x of shape {_shape(x)} must have {weight.shape[0]} features for weight of shape "
                         f"{weight.shape} (in, out)")
    if bias is not None and _shape(bias) != (weight.shape[1],):
        raise ValueError(f"{op}: bias must have shape ({weight.shape[1]},), got {_shape(bias)}")
    _check_nonempty(op, "x", x)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    out = _check_out(op, out, x.shape[:-1] + (weight.shape[1],), x.dtype, {"x": x, "bias": bias})
    if be.NAME == "numpy":
        return be.linear(x, weight, bias, activation, out=out)
    from qkv.quant import linear_cpu

    return linear_cpu(x, weight, bias, activation, out)


def mlp(x, w1, b1, w2, b2, activation="gelu_tanh"):
    """The transformer MLP: ``linear(activation(linear(x, w1, b1)), w2, b2)``.

    x (..., C), w1 (C, H), b1 (H,) or None, w2 (H, C_out), b2 (C_out,) or None.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"mlp: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    h = linear(x, w1, b1, activation)
    return linear(h, w2, b2)


def _check_attention_args(op, be, q, k, v, causal, mask, kv_lengths, scale):
    """attention's checks of q, k, v and its options; returns (causal, mask, scale) normalised."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        if _backend.array_kind(a) is None:
            raise TypeError(f"{op}: {name} must be an array, got {type(a).__name__}")
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
    return causal, mask, scale


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
    causal, mask, scale = _check_attention_args(op, be, q, k, v, causal, mask, kv_lengths, scale)
    B, Hq, Lq, _ = q.shape
    out = _check_out(op, out, (B, Hq, Lq, v.shape[3]), q.dtype,
                     {"q": q, "k": k, "v": v, "mask": mask, "kv_lengths": kv_lengths})
    return be.attention(q, k, v, scale, causal=causal, mask=mask, kv_lengths=kv_lengths, out=out,
                        return_lse=bool(return_lse), return_weights=bool(return_weights))


# ---------------------------------------------------------------------------------------------
# backward ops: the gradients of the ops above, and the fused cross-entropy
#
# Each takes the upstream gradient first and what its forward saw, validates once, and returns
# fresh arrays (inputs are never modified), or fills the caller's buffers given as ``out=`` (a
# training loop reuses them from step to step; an entry of None is allocated). Gradients of
# parameters that were None come back as None. Row reductions (dweight, dbias, the embedding
# scatter, the loss) are deterministic: the same bits whatever the thread count.


def _stats_dtype(dtype):
    import numpy

    return numpy.dtype(numpy.float64) if dtype == numpy.float64 else numpy.dtype(numpy.float32)


def _check_like(op, name, a, ref_name, ref):
    """a has ref's shape and dtype."""
    if _backend.array_kind(a) is None:
        raise TypeError(f"{op}: {name} must be an array, got {type(a).__name__}")
    if _shape(a) != _shape(ref):
        raise ValueError(f"{op}: {name} has shape {_shape(a)} but {ref_name} has shape {_shape(ref)}")
    if a.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} has dtype {a.dtype} but {ref_name} has dtype {ref.dtype}")


def _check_result(op, name, a, shape, dtype, inputs, fortran=False):
    """A caller's destination for one backward result: an array of this shape and dtype,
    C-contiguous (F-contiguous with fortran=True), writeable, overlapping no input; None passes."""
    if a is None:
        return None
    if _backend.array_kind(a) is None:
        raise TypeError(f"{op}: {name} must be an array, got {type(a).__name__}")
    if _shape(a) != tuple(shape) or a.dtype != dtype:
        raise ValueError(f"{op}: {name} has shape {_shape(a)} and dtype {a.dtype}; expected {tuple(shape)} {dtype}")
    if not (a.flags.f_contiguous if fortran else a.flags.c_contiguous) or not a.flags.writeable:
        raise ValueError(f"{op}: {name} must be {'F' if fortran else 'C'}-contiguous and writeable")
    shares = _namespace(a).shares_memory
    for iname, b in inputs.items():
        if b is not None and shares(a, b):
            raise ValueError(f"{op}: {name} overlaps {iname}; pass a separate buffer")
    return a


def _check_results(op, out, specs, inputs):
    """out=: None, or a tuple with one destination (or None) per result; specs: (name, shape or None
    when that result is None, dtype, fortran) per result. Destinations overlap no input and no
    other destination."""
    if out is None:
        return None
    if not isinstance(out, (tuple, list)) or len(out) != len(specs):
        names = ", ".join(s[0] for s in specs)
        raise TypeError(f"{op}: out must be a tuple ({names}) of arrays or None, got {type(out).__name__}")
    others = {n: b for n, b in inputs.items() if b is not None}
    checked = []
    for i, (a, (name, shape, dtype, fortran)) in enumerate(zip(out, specs)):
        if a is not None and shape is None:
            raise ValueError(f"{op}: out[{i}] ({name}) must be None: that gradient is not computed")
        if a is not None:
            _check_result(op, f"out[{i}] ({name})", a, shape, dtype, others, fortran)
            others[name] = a
        checked.append(a)
    return tuple(checked)


def _backward(be, name, out, *args, out_kw="out", **kw):
    """Call the backward op ``name`` of backend ``be``. A backend with BACKWARD_OUT writes into the
    destinations itself (passed as ``out_kw``); for the others (the float64 oracle, cuda) the fresh
    results are copied into them."""
    fn = getattr(be, name)
    if getattr(be, "BACKWARD_OUT", False):
        return fn(*args, **kw) if out is None else fn(*args, **{out_kw: out}, **kw)
    kw.pop("work", None)
    return fn(*args, **kw) if out is None else _fill(out, fn(*args, **kw))


def _fill(out, res):
    """Copy fresh results into the destinations given (an array, or a tuple with None entries)."""
    if not isinstance(out, tuple):
        _namespace(out).copyto(out, res)
        return out
    for o, r in zip(out, res):
        if o is not None:
            _namespace(o).copyto(o, r)
    return tuple(r if o is None else o for o, r in zip(out, res))


def _check_int_array(op, name, a, shape):
    if _backend.array_kind(a) is None:
        raise TypeError(f"{op}: {name} must be an integer array of shape {shape}, got {type(a).__name__}")
    if a.dtype.kind not in "iu":
        raise TypeError(f"{op}: {name} must be integers, got dtype {a.dtype}")
    if _shape(a) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {_shape(a)}")


def layer_norm_backward(dy, x, weight=None, bias=None, eps=1e-5, *, mean=None, rstd=None, out=None):
    """Gradients of :func:`layer_norm`: ``(dx, dweight, dbias)``.

    dy and x are (..., C); weight and bias (C,) or None, as given to the forward (bias is only
    looked at for whether it exists: its gradient is the column sum of dy). mean and rstd are the
    statistics from ``layer_norm(..., return_stats=True)``; without them they are recomputed from
    x and eps. dweight / dbias are None when weight / bias are. ``out=(dx, dweight, dbias)``:
    C-contiguous destinations (each may be None: allocated; None where the parameter is None).
    """
    op = "layer_norm_backward"
    be = _backend.select(op, {"dy": dy, "x": x, "weight": weight, "bias": bias, "mean": mean, "rstd": rstd})
    eps = _check_layer_norm_args(op, be, x, weight, bias, eps)
    _check_like(op, "dy", dy, "x", x)
    if (mean is None) != (rstd is None):
        raise ValueError(f"{op}: pass both mean and rstd (from layer_norm(..., return_stats=True)) or neither")
    if mean is not None:
        sd = _stats_dtype(x.dtype)
        for name, s in (("mean", mean), ("rstd", rstd)):
            if s.dtype.kind != "f" or _shape(s) != _shape(x)[:-1]:
                raise ValueError(f"{op}: {name} must be a float array of shape {_shape(x)[:-1]} for x of shape "
                                 f"{_shape(x)}, got {_shape(s)} {s.dtype}")
        mean, rstd = (s if s.dtype == sd else s.astype(sd) for s in (mean, rstd))
    C = x.shape[-1]
    out = _check_results(op, out, (("dx", x.shape, x.dtype, False),
                                   ("dweight", None if weight is None else (C,), x.dtype, False),
                                   ("dbias", None if bias is None else (C,), x.dtype, False)),
                         {"dy": dy, "x": x, "weight": weight, "bias": bias, "mean": mean, "rstd": rstd})
    return _backward(be, "layer_norm_backward", out, dy, x, weight, bias, eps, mean=mean, rstd=rstd)


def gelu_backward(dy, x, approximate="tanh", *, out=None):
    """Gradient of :func:`gelu`: ``dy * gelu'(x)`` for the same ``approximate`` form (into ``out``,
    a C-contiguous array like x, when given)."""
    op = "gelu_backward"
    be = _backend.select(op, {"dy": dy, "x": x})
    _check_float(op, "x", x, be)
    if approximate not in ("tanh", "none"):
        raise ValueError(f"{op}: approximate must be 'tanh' or 'none', got {approximate!r}")
    _check_nonempty(op, "x", x)
    _check_like(op, "dy", dy, "x", x)
    out = _check_result(op, "out", out, x.shape, x.dtype, {"dy": dy, "x": x})
    return _backward(be, "gelu_backward", out, dy, x, approximate)


def softmax_backward(dy, y, axis=-1, *, scale=1.0):
    """Gradient of :func:`softmax` from its output y: ``scale * y * (dy - sum(dy * y))`` along axis.

    Masks need not be passed: masked entries have y == 0, where dx is exactly 0 and dy is ignored
    (even NaN/Inf). ``scale`` is the forward's.
    """
    op = "softmax_backward"
    be = _backend.select(op, {"dy": dy, "y": y})
    _check_float(op, "y", y, be)
    if y.ndim == 0:
        raise ValueError(f"{op}: y must have at least 1 dimension, got a scalar")
    _check_nonempty(op, "y", y)
    _check_like(op, "dy", dy, "y", y)
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not -y.ndim <= axis < y.ndim:
        raise ValueError(f"{op}: axis {axis!r} is out of range for y of shape {_shape(y)}")
    axis = int(axis) % y.ndim
    scale = _check_scalar(op, "scale", scale)
    if axis == y.ndim - 1:
        return be.softmax_backward(dy, y, scale)
    xp = _namespace(y)
    dx = be.softmax_backward(xp.moveaxis(dy, axis, -1), xp.moveaxis(y, axis, -1), scale)
    return xp.moveaxis(dx, -1, axis)


def linear_backward(dy, x, weight, bias=None, activation=None, *, preact=None, out=None, work=None):
    """Gradients of :func:`linear`: ``(dx, dweight, dbias)``.

    dy (..., out) is the gradient of the output; x (..., in) and weight (in, out) as in the
    forward; bias only says whether dbias is wanted (None gives None). With an activation,
    ``preact`` is the forward's pre-activation (``linear(..., return_preact=True)``): one pass
    computes g = dy * activation'(preact) and the column sums dbias, then dx = g @ weight.T and
    dweight = x.T @ g are two GEMMs. dweight has weight's memory order (C, or Fortran for a
    transposed PyTorch weight).

    ``out=(dx, dweight, dbias)``: destinations (each may be None: allocated), dx C-contiguous,
    dweight in weight's memory order. ``work``: a C-contiguous scratch array like dy for g (so that
    the call allocates nothing; otherwise g is allocated per call), its contents left unspecified.
    """
    op = "linear_backward"
    be = _backend.select(op, {"dy": dy, "x": x, "weight": weight, "bias": bias, "preact": preact})
    _check_float(op, "x", x, be)
    if x.ndim == 0:
        raise ValueError(f"{op}: x must have at least 1 dimension, got a scalar")
    if weight.ndim != 2:
        raise ValueError(f"{op}: weight must be 2-D (in, out), got shape {_shape(weight)}")
    K, N = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"{op}: x of shape {_shape(x)} has {x.shape[-1]} features but weight of shape "
                         f"{_shape(weight)} expects {K} (weight is (in, out))")
    if _backend.array_kind(dy) is None or _shape(dy) != _shape(x)[:-1] + (N,):
        raise ValueError(f"{op}: dy must have shape {_shape(x)[:-1] + (N,)} (x {_shape(x)}, weight "
                         f"{_shape(weight)}), got {_shape(dy) if hasattr(dy, 'shape') else type(dy).__name__}")
    if bias is not None and _shape(bias) != (N,):
        raise ValueError(f"{op}: bias must have shape ({N},), got {_shape(bias)}")
    _check_same_dtype(op, "x", x, {"dy": dy, "weight": weight, "bias": bias})
    _check_nonempty(op, "x", x)
    _check_nonempty(op, "weight", weight)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if activation is not None and preact is None:
        raise ValueError(f"{op}: activation {activation!r} needs preact= (linear(..., return_preact=True))")
    if preact is not None:
        _check_like(op, "preact", preact, "dy", dy)
        if activation is None:
            preact = None  # the identity's derivative needs no pre-activation
    fortran = weight.flags.f_contiguous and not weight.flags.c_contiguous
    inputs = {"dy": dy, "x": x, "weight": weight, "bias": bias, "preact": preact}
    out = _check_results(op, out, (("dx", x.shape, x.dtype, False), ("dweight", (K, N), x.dtype, fortran),
                                   ("dbias", None if bias is None else (N,), x.dtype, False)), inputs)
    if work is not None and activation is not None:
        work = _check_result(op, "work", work, dy.shape, dy.dtype,
                             {**inputs, **dict(zip(("dx", "dweight", "dbias"), out or ()))})
    else:
        work = None
    return _backward(be, "linear_backward", out, dy, x, weight, bias, activation, preact=preact, work=work)


def embedding_backward(dout, ids, num_embeddings, *, out=None):
    """Gradient of an embedding lookup ``table[ids]``: ``dtable (num_embeddings, C)``.

    dout (..., C) is the gradient of the looked-up rows, ids (...) their integer ids in
    [0, num_embeddings). Row v of dtable is the sum of the dout rows whose id is v, added in
    position order: the same bits whatever the thread count (no atomics). ``out``: a C-contiguous
    (num_embeddings, C) destination (every row is written).
    """
    op = "embedding_backward"
    be = _backend.select(op, {"dout": dout, "ids": ids})
    _check_float(op, "dout", dout, be)
    if dout.ndim == 0:
        raise ValueError(f"{op}: dout must have at least 1 dimension (..., C), got a scalar")
    _check_int_array(op, "ids", ids, _shape(dout)[:-1])
    if isinstance(num_embeddings, bool) or not isinstance(num_embeddings, numbers.Integral) or num_embeddings < 1:
        raise ValueError(f"{op}: num_embeddings must be a positive int, got {num_embeddings!r}")
    num_embeddings = int(num_embeddings)
    if dout.shape[-1] == 0:
        raise ValueError(f"{op}: dout has an empty last dimension, shape {_shape(dout)}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_embeddings):
        raise ValueError(f"{op}: ids must lie in [0, {num_embeddings}) (num_embeddings), got min {int(ids.min())} "
                         f"max {int(ids.max())}")
    out = _check_result(op, "out", out, (num_embeddings, dout.shape[-1]), dout.dtype, {"dout": dout, "ids": ids})
    return _backward(be, "embedding_backward", out, dout, ids, num_embeddings)


def cross_entropy(logits, targets, ignore_index=-1, *, return_grad=False, out=None):
    """Mean cross-entropy of ``logits (..., V)`` against integer ``targets (...)``, fused.

    loss = mean over the rows whose target != ignore_index of ``logsumexp(row) - row[target]``.
    With ``return_grad=True`` returns ``(loss, dlogits)``: dlogits = (softmax(row) - onehot) /
    n_valid, 0 on ignored rows, computed in the same pass over each row (no second (N, V) buffer).
    loss is a 0-d array (float64 for float64 logits, else float32). Every target ignored: loss 0
    and zero gradients (PyTorch gives NaN). A row with NaN or +inf logits gives NaN; a target whose
    logit is -inf gives +inf. ``out`` (with return_grad): the C-contiguous destination of dlogits,
    which may be ``logits`` itself (the gradient then replaces the logits, row by row: no second
    (N, V) buffer at all).
    """
    op = "cross_entropy"
    be = _backend.select(op, {"logits": logits, "targets": targets})
    _check_float(op, "logits", logits, be)
    if logits.ndim == 0:
        raise ValueError(f"{op}: logits must have at least 1 dimension (..., V), got a scalar")
    _check_nonempty(op, "logits", logits)
    _check_int_array(op, "targets", targets, _shape(logits)[:-1])
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"{op}: ignore_index must be an int, got {ignore_index!r}")
    ignore_index = int(ignore_index)
    V = logits.shape[-1]
    if targets.size:
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
        if bool(bad.any()):
            first = targets[bad].reshape(-1)[0]
            raise ValueError(f"{op}: targets must lie in [0, {V}) (logits {_shape(logits)}) or equal ignore_index "
                             f"{ignore_index}, got {int(first)}")
    if out is None:
        return be.cross_entropy(logits, targets, ignore_index, return_grad=bool(return_grad))
    if not return_grad:
        raise ValueError(f"{op}: out= is the destination of dlogits; it needs return_grad=True")
    out = _check_result(op, "out", out, logits.shape, logits.dtype,
                        {"targets": targets} if out is logits else {"logits": logits, "targets": targets})
    if getattr(be, "BACKWARD_OUT", False):
        return be.cross_entropy(logits, targets, ignore_index, return_grad=True, out=out)
    loss, dx = be.cross_entropy(logits, targets, ignore_index, return_grad=True)
    return loss, _fill(out, dx)


# ---------------------------------------------------------------------------------------------
# attention backward


def attention_backward(dout, q, k, v, out, lse, *, causal=False, mask=None, kv_lengths=None, scale=None,
                       grads_out=None):
    """Gradients of :func:`attention`: ``(dq, dk, dv)``, FlashAttention-2's algorithm.

    dout (B, Hq, Lq, Dv) is the gradient of the output; q, k, v, causal, mask, kv_lengths and scale
    are the forward's; out (B, Hq, Lq, Dv) and lse (B, Hq, Lq) are what
    ``attention(..., return_lse=True)`` returned. The probabilities are recomputed tile by tile from
    q, k and lse (the Lq x Lk matrix is never materialised). dk and dv (B, Hkv, Lk, D/Dv) sum over
    the query heads of each group (GQA/MQA). A masked key gets exactly zero dk and dv, even when its
    key or value holds NaN/Inf; a query with no visible key gets zero dq. An additive mask receives
    no gradient (it is a constant of the forward; none is returned). ``grads_out=(dq, dk, dv)``:
    C-contiguous destinations (each may be None: allocated).
    """
    op = "attention_backward"
    be = _backend.select(op, {"dout": dout, "q": q, "k": k, "v": v, "out": out, "lse": lse, "mask": mask,
                              "kv_lengths": kv_lengths})
    causal, mask, scale = _check_attention_args(op, be, q, k, v, causal, mask, kv_lengths, scale)
    B, Hq, Lq, _ = q.shape
    o_shape = (B, Hq, Lq, v.shape[3])
    for name, a in (("dout", dout), ("out", out)):
        if _backend.array_kind(a) is None:
            raise TypeError(f"{op}: {name} must be an array, got {type(a).__name__}")
        if _shape(a) != o_shape:
            raise ValueError(f"{op}: {name} must have shape {o_shape} (q {_shape(q)}, v {_shape(v)}), got {_shape(a)}")
    _check_same_dtype(op, "q", q, {"dout": dout, "out": out})
    if _backend.array_kind(lse) is None:
        raise TypeError(f"{op}: lse must be an array, got {type(lse).__name__}")
    if _shape(lse) != (B, Hq, Lq) or lse.dtype.kind != "f":
        raise ValueError(f"{op}: lse must be a float array of shape {(B, Hq, Lq)} (attention(..., return_lse=True)), "
                         f"got {_shape(lse)} {lse.dtype}")
    sd = _stats_dtype(q.dtype)
    if lse.dtype != sd:
        lse = lse.astype(sd)
    Hkv, Lk = k.shape[1], k.shape[2]
    grads_out = _check_results(op, grads_out, (("dq", q.shape, q.dtype, False), ("dk", (B, Hkv, Lk, q.shape[3]), q.dtype,
                                                                                  False),
                                               ("dv", (B, Hkv, Lk, v.shape[3]), q.dtype, False)),
                               {"dout": dout, "q": q, "k": k, "v": v, "out": out, "lse": lse})
    return _backward(be, "attention_backward", grads_out, dout, q, k, v, out, lse, scale, out_kw="grads",
                     causal=causal, mask=mask, kv_lengths=kv_lengths)


# ---------------------------------------------------------------------------------------------
# Llama-family ops: RMSNorm, rotary position embeddings (RoPE), SwiGLU, and their backward


def _linear_out_features(op, weight, activation):
    """linear's output width: weight's columns, or half of them for "swiglu" ([gate | up])."""
    n = weight.shape[1]
    if activation != "swiglu":
        return n
    if n % 2:
        raise ValueError(f"{op}: activation 'swiglu' needs weight (in, 2 * inner) with [gate | up] columns, got "
                         f"shape {_shape(weight)} (an odd column count)")
    return n // 2


def _check_rms_norm_args(op, be, x, weight, eps):
    """x (..., C) floating and non-empty, weight (C,) or None of x's dtype, eps >= 0 -> eps."""
    _check_float(op, "x", x, be)
    if x.ndim == 0:
        raise ValueError(f"{op}: x must have at least 1 dimension, got a scalar")
    _check_nonempty(op, "x", x)
    C = x.shape[-1]
    if weight is not None and _shape(weight) != (C,):
        raise ValueError(f"{op}: weight must have shape ({C},) to match x of shape {_shape(x)}, got {_shape(weight)}")
    _check_same_dtype(op, "x", x, {"weight": weight})
    eps = _check_scalar(op, "eps", eps)
    if eps < 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")
    return eps


def rms_norm(x, weight, eps=1e-6, *, out=None, return_stats=False):
    """RMSNorm over the last axis: ``x / sqrt(mean(x^2) + eps) * weight`` (Llama, Qwen, Mistral).

    x is (..., C); weight (C,) or None. ``return_stats=True`` returns ``(y, rstd)``, rstd =
    1/sqrt(mean(x^2) + eps) of shape x.shape[:-1] (float64 for float64 x, else float32), what
    rms_norm_backward reuses. Statistics accumulate in float32 or better whatever x's dtype.
    """
    op = "rms_norm"
    be = _backend.select(op, {"x": x, "weight": weight, "out": out})
    eps = _check_rms_norm_args(op, be, x, weight, eps)
    out = _check_out(op, out, x.shape, x.dtype, {"x": x, "weight": weight})
    if return_stats:
        return be.rms_norm(x, weight, eps, out=out, return_stats=True)
    return be.rms_norm(x, weight, eps, out=out)


def rms_norm_backward(dy, x, weight, rstd=None, *, eps=1e-6, out=None):
    """Gradients of :func:`rms_norm`: ``(dx, dweight)``.

    dy and x are (..., C), weight (C,) or None as given to the forward (dweight is None then).
    rstd is ``rms_norm(..., return_stats=True)``'s; without it it is recomputed from x and eps.
    dweight sums over rows in a fixed order: the same bits whatever the thread count.
    ``out=(dx, dweight)``: C-contiguous destinations (each may be None: allocated).
    """
    op = "rms_norm_backward"
    be = _backend.select(op, {"dy": dy, "x": x, "weight": weight, "rstd": rstd})
    eps = _check_rms_norm_args(op, be, x, weight, eps)
    _check_like(op, "dy", dy, "x", x)
    if rstd is not None:
        if _backend.array_kind(rstd) is None:
            raise TypeError(f"{op}: rstd must be an array, got {type(rstd).__name__}")
        if rstd.dtype.kind != "f" or _shape(rstd) != _shape(x)[:-1]:
            raise ValueError(f"{op}: rstd must be a float array of shape {_shape(x)[:-1]} for x of shape "
                             f"{_shape(x)}, got {_shape(rstd)} {rstd.dtype}")
        sd = _stats_dtype(x.dtype)
        if rstd.dtype != sd:
            rstd = rstd.astype(sd)
    out = _check_results(op, out, (("dx", x.shape, x.dtype, False), ("dweight", None if weight is None else
                                                                       weight.shape, x.dtype, False)),
                         {"dy": dy, "x": x, "weight": weight, "rstd": rstd})
    return _backward(be, "rms_norm_backward", out, dy, x, weight, rstd, eps)


def _check_rope_args(op, be, x, name, positions, theta, scaling):
    """x (B, L, H, D) floating, D even; positions int (B, L) or (L,); theta > 0; scaling a
    rope_scaling dict or None -> the inverse frequencies (D/2,) float64 (qkv._rope.inv_freq)."""
    from qkv import _rope

    if _backend.array_kind(x) is None:
        raise TypeError(f"{op}: {name} must be an array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{op}: {name} must be 4-D (B, L, H, D), got shape {_shape(x)}")
    _check_float(op, name, x, be)
    _check_nonempty(op, name, x)
    B, L, _, D = x.shape
    if D % 2:
        raise ValueError(f"{op}: the head dim D of {name} {_shape(x)} must be even (rotate-half pairs i, i + D/2)")
    if _backend.array_kind(positions) is None:
        raise TypeError(f"{op}: positions must be an integer array of shape ({B}, {L}) or ({L},), got "
                        f"{type(positions).__name__}")
    if positions.dtype.kind not in "iu":
        raise TypeError(f"{op}: positions must be integers, got dtype {positions.dtype}")
    if _shape(positions) not in ((B, L), (L,)):
        raise ValueError(f"{op}: positions must have shape ({B}, {L}) or ({L},) for {name} of shape {_shape(x)} "
                         f"(B, L, H, D), got {_shape(positions)}")
    theta = _check_scalar(op, "theta", theta, positive=True)
    return _rope.inv_freq(D, theta, _rope.check_scaling(op, scaling))


def rope(x, positions, *, theta=10000.0, scaling=None, out=None):
    """Rotary position embeddings, Hugging Face Llama's rotate-half convention.

    x (B, L, H, D) (a view whose last axis is contiguous, e.g. q sliced from a fused qkv
    projection, is read without a copy); positions (B, L) or (L,) integers, one per row so padded
    batches and KV-cache decoding work. For i < D/2, with a = positions * inv_freq[i]:
    ``out[i] = x[i] cos a - x[i + D/2] sin a``, ``out[i + D/2] = x[i + D/2] cos a + x[i] sin a``,
    inv_freq[i] = theta^(-2i/D), or Llama 3's scaled frequencies when ``scaling`` is a rope_scaling
    dict with ``rope_type: "llama3"`` (see qkv._rope). ``out=x`` rotates in place.
    """
    op = "rope"
    be = _backend.select(op, {"x": x, "positions": positions, "out": out})
    inv_freq = _check_rope_args(op, be, x, "x", positions, theta, scaling)
    if out is not None and out is not x:
        out = _check_out(op, out, x.shape, x.dtype, {"x": x, "positions": positions})
    return be.rope(x, positions, inv_freq, out=out)


def rope_backward(dy, positions, *, theta=10000.0, scaling=None, out=None):
    """Gradient of :func:`rope`: dy rotated by the negative angles (the rotation's transpose).
    ``out=dy`` rotates in place (as rope's out=x)."""
    op = "rope_backward"
    be = _backend.select(op, {"dy": dy, "positions": positions, "out": out})
    inv_freq = _check_rope_args(op, be, dy, "dy", positions, theta, scaling)
    if out is not None and out is not dy:
        out = _check_out(op, out, dy.shape, dy.dtype, {"dy": dy, "positions": positions})
    return be.rope(dy, positions, inv_freq, out=out, inverse=True)


def _check_swiglu_args(op, be, gate, up):
    _check_float(op, "gate", gate, be)
    _check_nonempty(op, "gate", gate)
    _check_like(op, "up", up, "gate", gate)


def swiglu(gate, up, *, out=None):
    """``silu(gate) * up``, silu(g) = g * sigmoid(g): the gated MLP of Llama, Qwen and Mistral.

    gate and up have the same shape and dtype. For the fused projection see
    ``linear(x, W, b, activation="swiglu")``.
    """
    op = "swiglu"
    be = _backend.select(op, {"gate": gate, "up": up, "out": out})
    _check_swiglu_args(op, be, gate, up)
    out = _check_out(op, out, gate.shape, gate.dtype, {"gate": gate, "up": up})
    return be.swiglu(gate, up, out=out)


def swiglu_backward(dy, gate, up, *, out=None):
    """Gradients of :func:`swiglu`: ``(dgate, dup)`` = (dy * up * silu'(gate), dy * silu(gate)).
    ``out=(dgate, dup)``: C-contiguous destinations (each may be None: allocated)."""
    op = "swiglu_backward"
    be = _backend.select(op, {"dy": dy, "gate": gate, "up": up})
    _check_swiglu_args(op, be, gate, up)
    _check_like(op, "dy", dy, "gate", gate)
    out = _check_results(op, out, (("dgate", gate.shape, gate.dtype, False), ("dup", gate.shape, gate.dtype, False)),
                         {"dy": dy, "gate": gate, "up": up})
    return _backward(be, "swiglu_backward", out, dy, gate, up)


# ---------------------------------------------------------------------------------------------
# internal: the validated-once path of qkv.nn's inference forward
#
# A model's forward calls the ops above a few hundred times per decoded token on arguments it built
# itself: its own weights, activations it computed, out= buffers from its Scratch, all of one dtype
# on one device. Checking them again at every call cost as much as the GEMVs of a small model
# (GPT-2 small: ~90 calls per token at ~30 us each). forward_kernels(x) checks once per forward pass
# what can change from one pass to the next (the backend in force for x's device, x's dtype) and
# returns what the layers call: on the ``cpu`` backend qkv._cpu.trusted.Kernels (the C kernels the
# public ops reach, with the same arguments, without the checks), on any other backend the public ops. Each
# offers linear(x, weight, bias, activation, out), layer_norm(x, weight, bias, eps, out),
# rms_norm(x, weight, eps, out), rope(x, positions, theta, scaling, out) and
# attention(q, k, v, causal, mask, out) (scale 1/sqrt(D)). Nothing but qkv.nn's layers calls them.


class _PublicOps:
    """forward_kernels off the ``cpu`` backend: the public ops, checked at every call."""

    @staticmethod
    def linear(x, weight, bias, activation, out):
        return linear(x, weight, bias, activation, out=out)

    @staticmethod
    def layer_norm(x, weight, bias, eps, out):
        return layer_norm(x, weight, bias, eps, out=out)

    @staticmethod
    def rms_norm(x, weight, eps, out):
        return rms_norm(x, weight, eps, out=out)

    @staticmethod
    def rope(x, positions, theta, scaling, out):
        return rope(x, positions, theta=theta, scaling=scaling, out=out)

    @staticmethod
    def attention(q, k, v, causal, mask, out):
        return attention(q, k, v, causal=causal, mask=mask, out=out)


PUBLIC_OPS = _PublicOps()


def forward_kernels(x):
    """The ops a qkv.nn model's inference forward calls on arrays it built itself, for its
    residual stream x: qkv._cpu.trusted.Kernels on the ``cpu`` backend (checked here, once), else PUBLIC_OPS."""
    be = _backend.select("forward", {"x": x})
    if be.NAME != "cpu":
        return PUBLIC_OPS
    _check_float("forward", "x", x, be)
    from qkv._cpu import trusted

    return trusted.kernels(x.dtype)
