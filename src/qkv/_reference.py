"""NumPy reference implementations: the oracle every test compares against, and the ``numpy``
backend at run time.

Written for clarity, not speed: every op computes in float64 and casts the result to the input
dtype. They take the arguments that ``qkv._ops`` has already validated and normalised (softmax axis
last, masks broadcastable, causal as None / "bottom_right" / "top_left").

Semantics shared by every backend (see DESIGN.md, the attention contract):
- masks: boolean True = keep; float masks are added to the scaled scores, and -inf there masks;
- causal "bottom_right": query i of Lq sees keys j <= i + Lk - Lq; "top_left": j <= i;
- attention's kv_lengths (B,): row b sees keys j < kv_lengths[b], and "bottom_right" puts the
  diagonal at that length, j <= i + kv_lengths[b] - Lq (FlashAttention's kv-cache alignment);
  "top_left" stays j <= i;
- a score of -inf (masked) has probability exactly 0; a row with every score -inf is all zeros
  (and its log-sum-exp is -inf); a NaN among the visible scores makes the row's other
  probabilities NaN; in softmax (not attention), a +inf score without NaN (overflow of finite
  inputs) takes the limit: equal mass on the +inf scores, so finite inputs never give NaN.
"""

import numpy as np
from scipy import special

NAME = "numpy"
ARRAY_KIND = "numpy"
DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_quiet = np.errstate(all="ignore")  # NaN/Inf are legitimate inputs; the oracle stays silent


def available():
    return True, None


def causal_keep(Lq, Lk, causal, kv_lengths=None):
    """Which keys each query may see: boolean (Lq, Lk), or (B, 1, Lq, Lk) given kv_lengths (B,).

    causal None sees every key, "bottom_right" j <= i + Lk - Lq, "top_left" j <= i. With
    kv_lengths n (B,): only keys j < n[b], and "bottom_right" aligns the diagonal to n[b] instead
    of Lk: j <= i + n[b] - Lq.
    """
    i = np.arange(Lq)[:, None]
    j = np.arange(Lk)[None, :]
    if kv_lengths is None:
        if causal is None:
            return np.ones((Lq, Lk), dtype=bool)
        return j <= i + (Lk - Lq if causal == "bottom_right" else 0)
    n = np.asarray(kv_lengths, dtype=np.int64)[:, None, None, None]  # (B, 1, 1, 1)
    keep = j < n
    if causal == "bottom_right":
        keep = keep & (j <= i + n - Lq)
    elif causal == "top_left":
        keep = keep & (j <= i)
    return keep


def _masked_scores(s, mask, causal):
    """Apply bool/additive mask and causal mode to float64 scores s (..., Lq, Lk); masked -> -inf."""
    keep = np.ones(s.shape, dtype=bool)
    if mask is not None:
        if mask.dtype == np.bool_:
            keep &= np.broadcast_to(mask, s.shape)
        else:
            m = np.broadcast_to(mask, s.shape).astype(np.float64)
            keep &= m != -np.inf
            s = s + np.where(keep, m, 0.0)
    if causal is not None:
        keep &= causal_keep(s.shape[-2], s.shape[-1], causal)
    return np.where(keep, s, -np.inf)


def _softmax_lse(s, inf_limit=False):
    """Softmax over the last axis of float64 scores with -inf = masked; returns (p, lse).

    inf_limit: a row whose max is +inf (and holds no NaN) gets equal mass on its +inf scores
    (qkv.softmax's rule for overflowing finite inputs); otherwise such a row is NaN (attention,
    where +inf scores only come from non-finite inputs).
    """
    with np.errstate(invalid="ignore", over="ignore"):
        mx = np.max(s, axis=-1, keepdims=True)
        empty = mx == -np.inf
        mx_safe = np.where(empty, 0.0, mx)
        e = np.exp(s - mx_safe)
        total = e.sum(axis=-1, keepdims=True)
        p = np.where(s == -np.inf, 0.0, e / np.where(empty, 1.0, total))
        p = np.where(empty, 0.0, p)
        # a +inf score (overflow) without NaN: the limit puts equal mass on the +inf scores
        posinf = (mx == np.inf) & ~np.isnan(s).any(axis=-1, keepdims=True) & inf_limit
        n_inf = np.maximum((s == np.inf).sum(axis=-1, keepdims=True), 1)
        p = np.where(posinf, (s == np.inf) / n_inf, p)
        lse = np.where(empty, -np.inf, mx_safe + np.log(np.where(empty, 1.0, total)))[..., 0]
        lse = np.where(posinf[..., 0], np.inf, lse)
    return p, lse


@_quiet
def softmax(x, mask=None, causal=None, scale=1.0, out=None):
    """Softmax over the last axis of ``scale * x`` (+ mask), numerically stable."""
    s = x.astype(np.float64) * scale
    if s.ndim == 1:
        s = s[None, :]
        p, _ = _softmax_lse(_masked_scores(s, mask, causal), inf_limit=True)
        p = p[0]
    else:
        p, _ = _softmax_lse(_masked_scores(s, mask, causal), inf_limit=True)
    return _emit(p, x.dtype, out)


@_quiet
def layer_norm(x, weight=None, bias=None, eps=1e-5, out=None, return_stats=False):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (biased variance).

    return_stats: also return mean and rstd = 1 / sqrt(var + eps), x.shape[:-1] (stats_dtype).
    """
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight.astype(np.float64)
    if bias is not None:
        y = y + bias.astype(np.float64)
    y = _emit(y, x.dtype, out)
    if not return_stats:
        return y
    sd = stats_dtype(x.dtype)
    return y, mean[..., 0].astype(sd), (1.0 / np.sqrt(var[..., 0] + eps)).astype(sd)


def _gelu64(x64, approximate):
    if approximate == "tanh":
        # 0.5 x (1 + tanh(u)) == x sigmoid(2u); the sigmoid form has no cancellation for x < 0
        u = np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64**3)
        return x64 * special.expit(2.0 * u)
    return 0.5 * x64 * special.erfc(-x64 / np.sqrt(2.0))


@_quiet
def gelu(x, approximate="tanh", out=None):
    """GELU: ``approximate="tanh"`` (GPT-2) or ``"none"`` (exact, erf; BERT)."""
    return _emit(_gelu64(x.astype(np.float64), approximate), x.dtype, out)


def _activate(y, activation):
    if activation is None:
        return y
    if activation == "gelu_tanh":
        return _gelu64(y, "tanh")
    if activation == "gelu":
        return _gelu64(y, "none")
    if activation == "relu":
        return np.where(y > 0, y, np.where(np.isnan(y), y, 0.0))
    if activation == "swiglu":  # y's columns are [gate | up]
        g, u = np.split(y, 2, axis=-1)
        return g * special.expit(g) * u
    raise ValueError(f"unknown activation {activation!r}")


@_quiet
def linear(x, weight, bias=None, activation=None, out=None, return_preact=False):
    """activation(x @ weight + bias), weight (in, out); return_preact: also x @ weight + bias.
    A qkv.QuantizedWeight is dequantised (exactly) and multiplied in float64 like any weight."""
    w = weight.dequantize(np.float64) if hasattr(weight, "dequantize") else weight.astype(np.float64)
    y = x.astype(np.float64) @ w
    if bias is not None:
        y = y + bias.astype(np.float64)
    out = _emit(_activate(y, activation), x.dtype, out)
    return (out, out if activation is None else y.astype(x.dtype)) if return_preact else out


@_quiet
def attention(q, k, v, scale, causal=None, mask=None, kv_lengths=None, out=None, return_lse=False,
              return_weights=False):
    """softmax(scale * q k^T + mask) v, head by head, with GQA/MQA by repeating K/V heads.

    q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) -> out (B, Hq, Lq, Dv),
    lse (B, Hq, Lq) and weights (B, Hq, Lq, Lk) on request.
    """
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    k64 = np.repeat(k.astype(np.float64), group, axis=1)  # (B, Hq, Lk, D)
    v64 = np.repeat(v.astype(np.float64), group, axis=1)  # (B, Hq, Lk, Dv)
    s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k64) * scale  # (B, Hq, Lq, Lk)
    # masked keys may hold NaN/Inf: the masking below happens before they can reach the output
    if kv_lengths is not None:  # kv_lengths and causal together: per-row diagonals (causal_keep)
        s = np.where(causal_keep(Lq, Lk, causal, kv_lengths), s, -np.inf)
        causal = None
    s = _masked_scores(s, mask, causal)
    p, lse = _softmax_lse(s)
    o = _weighted_values(p, v64, s == -np.inf)
    result = [_emit(o, q.dtype, out)]
    if return_lse:
        result.append(lse.astype(np.float32 if q.dtype != np.float64 else np.float64))
    if return_weights:
        result.append(p.astype(q.dtype))
    return tuple(result) if len(result) > 1 else result[0]


def _weighted_values(p, v64, hidden):
    """p @ v, where a hidden key (score -inf) contributes nothing even if its value is NaN/Inf.

    p, hidden (B, H, Lq, Lk); v64 (B, H, Lk, Dv). Finite values go through one einsum; the rare
    non-finite ones are added back only for the queries that see them (IEEE: p * NaN = NaN).
    """
    finite = np.isfinite(v64)
    o = np.einsum("bhqk,bhkd->bhqd", p, np.where(finite, v64, 0.0))
    inject = np.where(finite, 0.0, v64)
    for b, h, j in zip(*np.nonzero(~finite.all(axis=-1))):
        rows = ~hidden[b, h, :, j]
        o[b, h, rows] += p[b, h, rows, j, None] * inject[b, h, j]
    return o


def _emit(y64, dtype, out):
    if out is None:
        return y64.astype(dtype)
    out[...] = y64
    return out


# ---------------------------------------------------------------------------------------------
# backward: the gradients of the ops above (and the fused cross-entropy), in float64
#
# Each takes the upstream gradient first (dy, dout) and what the forward saw. The conventions
# every backend shares:
# - layer norm: dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy * weight, xhat = (x - mean) rstd;
#   dweight = sum over rows of dy * xhat, dbias = sum over rows of dy. Saved stats, when given,
#   are used as they are (so a backend and the oracle start from the same numbers).
# - softmax: dx = scale * y * (dy - sum(dy * y)); where y == 0 (masked, or underflowed) dx is
#   exactly 0 and dy is ignored there, even when it is NaN/Inf.
# - gelu: the derivative of the forward's form; ReLU's is 1 for x > 0, 0 for x <= 0, NaN for NaN.
# - linear: g = dy * activation'(preact); dx = g weight^T, dweight = x^T g, dbias = column sums of g.
# - embedding: dtable[v] = sum of dout rows whose id is v (rows with no id are 0).
# - cross_entropy: mean over the rows whose target is not ignore_index of lse - x[target]
#   (+inf when x[target] = -inf); dlogits = (softmax - onehot) / n_valid on those rows, 0 on the
#   ignored ones (whatever they hold). A row holding NaN or +inf logits gives NaN (loss and its
#   gradient row). Every target ignored: loss 0, dlogits 0 (PyTorch returns NaN there).

_GELU_A = np.sqrt(2.0 / np.pi)
_GELU_C = 0.044715
# Past |x| ~ 30 the derivative's second term is exactly 0 in float64 (the sigmoid or the Gaussian
# underflows); clipping x there first keeps x^3 * 0 from becoming inf * 0 = NaN at |x| -> inf.
_GRAD_CLIP = 1e4


def stats_dtype(dtype):
    """dtype of saved statistics (layer norm mean/rstd, cross-entropy loss): float64 for float64
    inputs, else float32 (as attention's lse)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _gelu_grad64(x64, approximate):
    xc = np.clip(x64, -_GRAD_CLIP, _GRAD_CLIP)
    if approximate == "tanh":
        # d/dx x sigmoid(2u) = s + x s (1 - s) 2u', with 1 - s = sigmoid(-2u) (no cancellation)
        u = _GELU_A * (x64 + _GELU_C * x64**3)
        s, sm = special.expit(2.0 * u), special.expit(-2.0 * u)
        return s + 2.0 * _GELU_A * xc * (1.0 + 3.0 * _GELU_C * xc * xc) * s * sm
    # d/dx x Phi(x) = Phi(x) + x phi(x)
    return 0.5 * special.erfc(-x64 / np.sqrt(2.0)) + xc * np.exp(-0.5 * xc * xc) / np.sqrt(2.0 * np.pi)


def _act_backward64(dy64, pre64, activation):
    """dy * activation'(pre), float64."""
    if activation is None:
        return dy64
    if activation == "relu":
        return np.where(pre64 > 0, dy64, np.where(np.isnan(pre64), pre64, 0.0))
    return dy64 * _gelu_grad64(pre64, "tanh" if activation == "gelu_tanh" else "none")


@_quiet
def layer_norm_backward(dy, x, weight=None, bias=None, eps=1e-5, mean=None, rstd=None):
    """(dx, dweight or None, dbias or None) of layer_norm; mean/rstd (x.shape[:-1]) or recomputed."""
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    C = x.shape[-1]
    if mean is None:
        mean64 = x64.mean(axis=-1, keepdims=True)
        rstd64 = 1.0 / np.sqrt(((x64 - mean64) ** 2).mean(axis=-1, keepdims=True) + eps)
    else:
        mean64, rstd64 = mean.astype(np.float64)[..., None], rstd.astype(np.float64)[..., None]
    xhat = (x64 - mean64) * rstd64
    g = dy64 if weight is None else dy64 * weight.astype(np.float64)
    dx = rstd64 * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dw = None if weight is None else (dy64 * xhat).reshape(-1, C).sum(axis=0).astype(weight.dtype)
    db = None if bias is None else dy64.reshape(-1, C).sum(axis=0).astype(bias.dtype)
    return dx.astype(x.dtype), dw, db


@_quiet
def gelu_backward(dy, x, approximate="tanh"):
    """dy * gelu'(x) for the tanh or the erf ("none") form."""
    return (dy.astype(np.float64) * _gelu_grad64(x.astype(np.float64), approximate)).astype(x.dtype)


@_quiet
def softmax_backward(dy, y, scale=1.0):
    """dx of y = softmax(scale * x) over the last axis, from y; 0 (and dy ignored) where y == 0."""
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    hidden = y64 == 0
    s = np.where(hidden, 0.0, dy64 * y64).sum(axis=-1, keepdims=True)
    return np.where(hidden, 0.0, scale * y64 * (dy64 - s)).astype(y.dtype)


@_quiet
def linear_backward(dy, x, weight, bias=None, activation=None, preact=None):
    """(dx, dweight, dbias or None) of linear; dweight has weight's memory order (C or Fortran)."""
    K, N = weight.shape
    g = _act_backward64(dy.astype(np.float64), None if preact is None else preact.astype(np.float64), activation)
    g2 = g.reshape(-1, N)
    dx = (g2 @ weight.astype(np.float64).T).reshape(x.shape[:-1] + (K,)).astype(x.dtype)
    order = "F" if weight.flags.f_contiguous and not weight.flags.c_contiguous else "C"
    dw = np.asarray(x.astype(np.float64).reshape(-1, K).T @ g2, order=order).astype(weight.dtype, order=order)
    db = None if bias is None else g2.sum(axis=0).astype(bias.dtype)
    return dx, dw, db


@_quiet
def embedding_backward(dout, ids, num_embeddings):
    """dtable (V, C): the sum of the rows of dout (..., C) at each id (ids (...), in [0, V))."""
    C = dout.shape[-1]
    d = np.zeros((num_embeddings, C), dtype=np.float64)
    np.add.at(d, np.asarray(ids, dtype=np.int64).reshape(-1), dout.astype(np.float64).reshape(-1, C))
    return d.astype(dout.dtype)


@_quiet
def cross_entropy(logits, targets, ignore_index=-1, return_grad=False):
    """Mean cross-entropy of logits (..., V) against integer targets (...); see the conventions above.

    Returns loss (0-d, stats_dtype) or (loss, dlogits) with dlogits like logits.
    """
    V = logits.shape[-1]
    x = logits.astype(np.float64).reshape(-1, V)
    t = np.asarray(targets).reshape(-1).astype(np.int64)
    valid = t != ignore_index
    n_valid = int(valid.sum())
    rows = np.arange(x.shape[0])
    bad = (np.isnan(x) | (x == np.inf)).any(axis=-1)  # NaN or +inf: the row is NaN
    p, lse = _softmax_lse(np.where(bad[:, None], 0.0, x))
    xt = x[rows, np.where(valid, t, 0)]
    loss_r = np.where(xt == -np.inf, np.inf, lse - xt)
    loss_r = np.where(bad, np.nan, loss_r)
    loss = np.where(valid, loss_r, 0.0).sum() / max(n_valid, 1)
    loss = np.asarray(loss, dtype=stats_dtype(logits.dtype))
    if not return_grad:
        return loss
    onehot = np.zeros_like(x)
    onehot[rows[valid], t[valid]] = 1.0
    g = np.where(bad[:, None], np.nan, p - onehot) / max(n_valid, 1)
    g = np.where(valid[:, None], g, 0.0)
    return loss, g.reshape(logits.shape).astype(logits.dtype)


# ---------------------------------------------------------------------------------------------
# attention backward
#
# The gradients of out = softmax(scale * q k^T + mask) v, from the forward's out and lse:
#   P = exp(S - lse) (S the masked scaled scores; 0 where S = -inf), D = rowsum(dO * O),
#   dV = P^T dO, dP = dO V^T, dS = P * (dP - D), dQ = scale dS K, dK = scale dS^T Q,
# with dK, dV summed over the query heads of each group (GQA/MQA). Hidden (query, key) pairs are
# selected out of every product, never multiplied by 0, so NaN/Inf in a masked key or value gives
# exactly zero there; a row with nothing visible (lse = -inf) gives zero dq. An additive mask is a
# constant of the forward: it receives no gradient.


@_quiet
def attention_backward(dout, q, k, v, out, lse, scale, causal=None, mask=None, kv_lengths=None):
    """(dq, dk, dv) of attention; dout and out (B, Hq, Lq, Dv), lse (B, Hq, Lq) from the forward.

    q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv): the forward's arguments, with the same
    causal, mask and kv_lengths. The additive mask gets no gradient (it is not returned).
    """
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    q64 = q.astype(np.float64)
    k64 = np.repeat(k.astype(np.float64), group, axis=1)  # (B, Hq, Lk, D)
    v64 = np.repeat(v.astype(np.float64), group, axis=1)  # (B, Hq, Lk, Dv)
    do64, o64 = dout.astype(np.float64), out.astype(np.float64)
    lse64 = lse.astype(np.float64)[..., None]  # (B, Hq, Lq, 1)
    s = np.einsum("bhqd,bhkd->bhqk", q64, k64) * scale  # (B, Hq, Lq, Lk)
    if kv_lengths is not None:
        s = np.where(causal_keep(Lq, Lk, causal, kv_lengths), s, -np.inf)
        causal = None
    s = _masked_scores(s, mask, causal)
    hidden = (s == -np.inf) | (lse64 == -np.inf)  # (B, Hq, Lq, Lk)
    p = np.where(hidden, 0.0, np.exp(np.where(hidden, 0.0, s - lse64)))
    Drow = np.where(lse64 == -np.inf, 0.0, (do64 * o64).sum(axis=-1, keepdims=True))  # (B, Hq, Lq, 1)
    dp = np.einsum("bhqd,bhkd->bhqk", do64, v64)
    ds = np.where(hidden, 0.0, p * (dp - Drow))
    hidden_t = hidden.transpose(0, 1, 3, 2)
    dq = scale * _weighted_values(ds, k64, hidden)
    dk = scale * _weighted_values(ds.transpose(0, 1, 3, 2), q64, hidden_t)  # (B, Hq, Lk, D)
    dv = _weighted_values(p.transpose(0, 1, 3, 2), do64, hidden_t)  # (B, Hq, Lk, Dv)
    dk = dk.reshape(B, Hkv, group, Lk, D).sum(axis=2)
    dv = dv.reshape(B, Hkv, group, Lk, v.shape[3]).sum(axis=2)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


# ---------------------------------------------------------------------------------------------
# AdamW
#
# The update of qkv.optim.AdamW (Loshchilov & Hutter, decoupled weight decay), in the order
# torch.optim.AdamW writes it; computed in float64 and stored back in the parameter's dtype.


@_quiet
def adamw(p, g, m, v, beta1, beta2, eps, step_size, bc2_sqrt, decay):
    """Update p, m, v (same shape and dtype) in place from the gradient g.

    step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t), decay = 1 - lr * weight_decay.
    Works on any array module with NumPy's API (NumPy or CuPy): it only uses array methods.
    """
    g64 = g.astype(np.float64)
    m64 = m.astype(np.float64)
    m64 += (1.0 - beta1) * (g64 - m64)
    v64 = beta2 * v.astype(np.float64) + (1.0 - beta2) * g64 * g64
    p64 = p.astype(np.float64) * decay
    p64 -= step_size * (m64 / (v64 ** 0.5 / bc2_sqrt + eps))
    m[...] = m64
    v[...] = v64
    p[...] = p64


# ---------------------------------------------------------------------------------------------
# Llama-family ops: RMSNorm, rotary position embeddings, SwiGLU (and their backward)
#
# - rms_norm: y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps) over the last axis;
#   backward dx = rstd (g - xhat mean(g xhat)), g = dy * weight, xhat = x rstd; dweight = sum over
#   rows of dy * xhat. Saved rstd, when given, is used as it is.
# - rope: Hugging Face Llama's rotate-half rotation of x (B, L, H, D) by angle p * inv_freq[i]
#   (inv_freq from qkv._rope.inv_freq, float64); inverse=True rotates by the negative angle, which
#   is the backward (a rotation's transpose is its inverse).
# - swiglu: silu(gate) * up, silu(g) = g sigmoid(g); dgate = dy up silu'(g), dup = dy silu(g),
#   silu'(g) = s (1 + g (1 - s)), s = sigmoid(g); g clipped to +-1e4 in g (1 - s), where that term
#   is exactly 0, so that inf * 0 never makes a NaN.


@_quiet
def rms_norm(x, weight=None, eps=1e-6, out=None, return_stats=False):
    """x * rstd * weight over the last axis, rstd = 1 / sqrt(mean(x^2) + eps).

    return_stats: also return rstd, x.shape[:-1] (stats_dtype)."""
    x64 = x.astype(np.float64)
    rstd = 1.0 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps)
    y = x64 * rstd
    if weight is not None:
        y = y * weight.astype(np.float64)
    y = _emit(y, x.dtype, out)
    return (y, rstd[..., 0].astype(stats_dtype(x.dtype))) if return_stats else y


@_quiet
def rms_norm_backward(dy, x, weight=None, rstd=None, eps=1e-6):
    """(dx, dweight or None) of rms_norm; rstd (x.shape[:-1]) or recomputed from x and eps."""
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    C = x.shape[-1]
    if rstd is None:
        r64 = 1.0 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps)
    else:
        r64 = rstd.astype(np.float64)[..., None]
    xhat = x64 * r64
    g = dy64 if weight is None else dy64 * weight.astype(np.float64)
    dx = r64 * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dw = None if weight is None else (dy64 * xhat).reshape(-1, C).sum(axis=0).astype(weight.dtype)
    return dx.astype(x.dtype), dw


def rope_cos_sin(positions, inv_freq, shape):
    """cos and sin of the angles, (B, L, 1, D/2) float64, for positions (B, L) or (L,)."""
    B, L = shape[0], shape[1]
    p = np.broadcast_to(np.asarray(positions, dtype=np.int64), (B, L)).astype(np.float64)
    ang = p[:, :, None, None] * np.asarray(inv_freq, np.float64)
    return np.cos(ang), np.sin(ang)


@_quiet
def rope(x, positions, inv_freq, out=None, inverse=False):
    """Rotate-half RoPE of x (B, L, H, D) at positions (B, L) or (L,); out may be x itself."""
    c, s = rope_cos_sin(positions, inv_freq, x.shape)
    if inverse:
        s = -s
    h = x.shape[-1] // 2
    x64 = x.astype(np.float64)
    x1, x2 = x64[..., :h], x64[..., h:]
    y = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    return _emit(y, x.dtype, out)


def _silu_parts64(g64):
    """silu(g) and silu'(g), float64."""
    s, sm = special.expit(g64), special.expit(-g64)
    gc = np.clip(g64, -_GRAD_CLIP, _GRAD_CLIP)
    return g64 * s, s * (1.0 + gc * sm)


@_quiet
def swiglu(gate, up, out=None):
    """silu(gate) * up."""
    g64 = gate.astype(np.float64)
    return _emit(g64 * special.expit(g64) * up.astype(np.float64), gate.dtype, out)


@_quiet
def swiglu_backward(dy, gate, up):
    """(dgate, dup) of swiglu."""
    silu, dsilu = _silu_parts64(gate.astype(np.float64))
    dy64 = dy.astype(np.float64)
    return (dy64 * up.astype(np.float64) * dsilu).astype(gate.dtype), (dy64 * silu).astype(gate.dtype)
