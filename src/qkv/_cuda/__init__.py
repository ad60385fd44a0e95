"""The ``cuda`` backend: our CUDA C kernels (src/qkv/_cuda/*.cu), loaded with CuPy RawModule.

Each op takes arguments already validated by qkv._ops, makes the layouts the kernels need, picks a
kernel from the table in qkv._cuda.kernels and launches it on CuPy's current stream with typed
NumPy scalars. Results are fresh CuPy arrays (or ``out``); inputs are never written.

- ``softmax``, ``layer_norm``, ``gelu``: one kernel each (softmax.cu, layernorm.cu, activation.cu);
- ``linear``: cuBLAS GEMM through ``cupy.matmul``, then our bias + activation epilogue in place;
- ``attention``: attn_mma (tensor cores, float16/bfloat16, head dim 64/128), else attn_rows
  (CUDA cores, float32 and every other shape); short query blocks against long caches go through
  attn_rows split over keys plus attn_combine (split-KV decode);
- ``embedding``: the gather used by qkv.nn (token rows, optionally plus position rows);
- the backward ops: layer_norm_backward, gelu_backward, softmax_backward, linear_backward (our
  fused activation-derivative pass, then cuBLAS), embedding_backward, cross_entropy (fused), each
  beside its forward's kernels; their row reductions are deterministic (no atomics);
  attention_backward: attn_bwd_rowdot, attn_bwd_dq_mma, attn_bwd_dkdv_mma (tensor cores, the
  shapes attn_mma takes), else attn_bwd_dq then attn_bwd_dkdv (CUDA cores, float32 and every other
  shape); no atomics either way.

Everything array-shaped goes through ``_runtime()``, an object with ``xp`` (the array module),
``launch`` and ``sm_count``. On a GPU that is CuPy; the CPU test harness (tests/cuda_sim)
substitutes NumPy arrays and the real kernels compiled for the CPU, so this file's argument
plumbing is tested without a GPU. Importing this module never imports CuPy.
"""

import math
import os

import numpy as np

from qkv._cuda import kernels

NAME = "cuda"
ARRAY_KIND = "cupy"


def _dtypes():
    out = [np.dtype(np.float16), np.dtype(np.float32)]
    try:
        import ml_dtypes

        out.append(np.dtype(ml_dtypes.bfloat16))
    except ImportError:  # bfloat16 needs ml_dtypes (CuPy uses it for the dtype)
        pass
    return tuple(out)


DTYPES = _dtypes()
CAUSAL_CODES = {None: 0, "bottom_right": 1, "top_left": 2}  # attention.cu's `causal`
ACTIVATION_CODES = {None: 0, "gelu_tanh": 1, "gelu": 2, "relu": 3}
MAX_HEAD_DIM = max(kernels.ATTN_ROWS_DMAX)
MIN_COMPUTE_CAPABILITY = 80  # cp.async, bf16 mma.sync
_path = "auto"               # "auto", "mma", "rows", "split": set_path() for tests and benchmarks


def set_path(name):
    """Force an attention kernel ("auto", "mma", "rows", "split"); shapes a kernel cannot take fall back."""
    global _path
    if name not in ("auto", "mma", "rows", "split"):
        raise ValueError(f"set_path: name must be 'auto', 'mma', 'rows' or 'split', got {name!r}")
    _path = name


def _dtype_name(dtype):
    name = np.dtype(dtype).name
    if name not in kernels.CTYPES:
        raise TypeError(f"cuda backend: dtype {name} is not supported (float16, bfloat16, float32)")
    return name


class _CupyRuntime:
    """Arrays and launches on the current CUDA device."""

    def __init__(self):
        import cupy

        from qkv._cuda import loader

        self.xp = cupy
        self._loader = loader

    def launch(self, family, name, grid, block, args, smem=0):
        fn = self._loader.function(family, name, smem)
        fn(tuple(int(g) for g in grid), tuple(int(b) for b in block), tuple(args), shared_mem=int(smem))

    def sm_count(self):
        dev = self.xp.cuda.Device()
        return int(dev.attributes["MultiProcessorCount"])

    def data_ptr(self, a):
        return a.data.ptr


_rt = None


def _runtime():
    global _rt
    if _rt is None:
        _rt = _CupyRuntime()
    return _rt


def available():
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install 'qkv[cuda]')"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError without a driver
        return False, f"no usable CUDA device ({type(exc).__name__}: {exc})"
    if n == 0:
        return False, "CuPy sees no CUDA device"
    cc = int(cupy.cuda.Device().compute_capability)
    if cc < MIN_COMPUTE_CAPABILITY:
        return False, f"the CUDA kernels need compute capability >= 8.0, this device has {cc / 10:.1f}"
    missing = [f for f, _ in kernels.FAMILIES.values() if not os.path.exists(os.path.join(kernels.HERE, f))]
    if missing:
        return False, f"kernel sources missing from the installation: {missing}"
    return True, None


# ---------------------------------------------------------------------------------------------
# layouts


def _i32(x):
    return np.int32(x)


def _i64(x):
    return np.int64(x)


def _contiguous(a):
    return _runtime().xp.ascontiguousarray(a)


def _dest(out, shape, dtype):
    """(array the kernel writes, array to return): out itself when C-contiguous, else a temporary."""
    xp = _runtime().xp
    if out is not None and out.flags.c_contiguous:
        return out, out
    return xp.empty(shape, dtype=dtype), out


def _finish(y, out):
    if out is None or out is y:
        return y
    out[...] = y
    return out


def _mask_arg(mask, shape):
    """A mask broadcastable to ``shape`` as (base, kind, element strides of the broadcast view).

    The kernels read element (i0, .., in) at ``base + sum(i_d * stride_d)``: broadcast axes have
    stride 0, so no mask is ever expanded. Bool masks are read as uint8 (nonzero = attend).
    """
    if mask is None:
        return None, 0, (0,) * len(shape)
    xp = _runtime().xp
    if any(s % mask.itemsize for s in mask.strides):
        mask = xp.ascontiguousarray(mask)
    kind = 1 if mask.dtype == np.bool_ else 2
    if kind == 1:
        mask = mask.view(np.uint8)
    mb = xp.broadcast_to(mask, shape)
    return mask, kind, tuple(s // mask.itemsize for s in mb.strides)


def _rows_of(x):
    xp = _runtime().xp
    return xp.ascontiguousarray(x).reshape(-1, x.shape[-1]) if x.ndim else xp.ascontiguousarray(x).reshape(1, 1)


def _block_for(n):
    """Threads for a one-CTA-per-row kernel over n columns: a multiple of 32, at most 1024."""
    return int(min(1024, max(32, 32 * math.ceil(min(n, 4096) / 32 / 4))))


# ---------------------------------------------------------------------------------------------
# elementwise and row ops


def softmax(x, mask=None, causal=None, scale=1.0, out=None):
    rt = _runtime()
    dt = _dtype_name(x.dtype)
    N = x.shape[-1]
    M = x.shape[-2] if x.ndim >= 2 else 1
    xr = _rows_of(x)                                     # (R, N)
    R = xr.shape[0]
    y, out = _dest(out, x.shape, x.dtype)
    base, kind, strides = _mask_arg(mask, x.shape)
    row_off = None
    if kind:
        # element offset of each row of the broadcast mask: sum over leading axes of index * stride
        xp = rt.xp
        lead = x.shape[:-1]
        row_off = xp.zeros(lead, dtype=np.int64)
        for d, (size, st) in enumerate(zip(lead, strides[:-1])):
            if st and size > 1:
                row_off += (xp.arange(size, dtype=np.int64) * st).reshape((size,) + (1,) * (len(lead) - d - 1))
        row_off = xp.ascontiguousarray(row_off.reshape(-1))
    off = (N - M) if causal == "bottom_right" else 0
    rt.launch("softmax", kernels.expr("softmax_rows", dt), (R,), (_block_for(N),),
              (y, xr, _i32(R), _i32(N), _i32(M), np.float32(scale), base, _i32(kind), row_off,
               _i64(strides[-1]), _i32(causal is not None), _i32(off)))
    return _finish(y, out)


def layer_norm(x, weight=None, bias=None, eps=1e-5, out=None, return_stats=False):
    rt = _runtime()
    dt = _dtype_name(x.dtype)
    xr = _rows_of(x)
    R, C = xr.shape
    y, out = _dest(out, x.shape, x.dtype)
    w = None if weight is None else _contiguous(weight)
    b = None if bias is None else _contiguous(bias)
    mean = rt.xp.empty(x.shape[:-1], dtype=np.float32) if return_stats else None
    rstd = rt.xp.empty(x.shape[:-1], dtype=np.float32) if return_stats else None
    rt.launch("layernorm", kernels.expr("layernorm_rows", dt), (R,), (_block_for(C),),
              (y, mean, rstd, xr, w, b, _i32(R), _i32(C), np.float32(eps)))
    return (_finish(y, out), mean, rstd) if return_stats else _finish(y, out)


def _bias_act(y, x, bias, act):
    """y = act(x + bias) over (R, N) contiguous arrays (y may be x)."""
    rt = _runtime()
    total = x.size
    N = x.shape[-1] if x.ndim else 1
    blocks = max(1, min(math.ceil(total / 256), 1 << 20))
    rt.launch("activation", kernels.expr("bias_act", _dtype_name(x.dtype)), (blocks,), (256,),
              (y, x, bias, _i64(total), _i32(N), _i32(act)))


def gelu(x, approximate="tanh", out=None):
    xc = _contiguous(x)
    y, out = _dest(out, x.shape, x.dtype)
    _bias_act(y, xc, None, ACTIVATION_CODES["gelu_tanh" if approximate == "tanh" else "gelu"])
    return _finish(y, out)


def _matmul(a, b, out=None):
    """a @ b through the array module's GEMM (cuBLAS); float32 for a dtype it lacks (bfloat16)."""
    xp = _runtime().xp
    try:
        return xp.matmul(a, b, out=out)
    except (TypeError, NotImplementedError):
        r = xp.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
        if out is None:
            return r
        out[...] = r
        return out


def linear(x, weight, bias=None, activation=None, out=None, return_preact=False):
    """cuBLAS GEMM (x @ weight through the array module's matmul), then bias + activation in place.

    return_preact: the GEMM + bias go to a separate buffer and the activation reads it."""
    if activation == "swiglu":
        return _linear_swiglu(x, weight, bias, out, return_preact)
    xp = _runtime().xp
    x2 = _rows_of(x)                                     # (R, in)
    shape = x.shape[:-1] + (weight.shape[1],)
    y, out = _dest(out, shape, x.dtype)
    pre = xp.empty(shape, dtype=x.dtype) if return_preact and activation is not None else y
    _matmul(x2, weight, out=pre.reshape(-1, weight.shape[1]))
    b = None if bias is None else _contiguous(bias)
    if pre is not y:
        if b is not None:
            _bias_act(pre, pre, b, ACTIVATION_CODES[None])
        _bias_act(y, pre, None, ACTIVATION_CODES[activation])
    elif bias is not None or activation is not None:
        _bias_act(y, y, b, ACTIVATION_CODES[activation])
    y = _finish(y, out)
    return (y, pre if activation is not None else y) if return_preact else y


def embedding(ids, table, pos=None, pos0=0):
    """table[ids] (+ pos[pos0 + position]) for ids (..., L) int, table (V, C), pos (P, C) or None.

    Ids outside [0, V) and positions past P raise ValueError (one device-to-host check).
    """
    xp = _runtime().xp
    V, C = table.shape
    ids64 = xp.ascontiguousarray(ids, dtype=np.int64)
    n = ids64.size
    L = ids64.shape[-1] if ids64.ndim else 1
    if n and bool(((ids64 < 0) | (ids64 >= V)).any()):
        raise ValueError(f"embedding: ids must lie in [0, {V}) for a table of shape {tuple(table.shape)}")
    if pos is not None and pos0 + L > pos.shape[0]:
        raise ValueError(f"embedding: positions {pos0}..{pos0 + L - 1} exceed the position table {tuple(pos.shape)}")
    y = xp.empty(tuple(ids64.shape) + (C,), dtype=table.dtype)
    if n:
        _runtime().launch("embedding", kernels.expr("embedding_gather", _dtype_name(table.dtype)), (n,),
                          (_block_for(C),), (y, _contiguous(table), ids64, None if pos is None else _contiguous(pos),
                                             _i32(C), _i32(L), _i32(pos0)))
    return y


# ---------------------------------------------------------------------------------------------
# backward ops (arguments validated by qkv._ops): the row kernels of layernorm.cu, activation.cu,
# softmax.cu and embedding.cu; the GEMMs of linear_backward are cuBLAS's. Row reductions go
# through fixed chunks (kernels.row_chunks) and sum_partials: no atomics, the same bits every run.


def _sum_partials(family, out, partial, n_chunks, stride, N):
    """out (N,) = sum over chunks, in order, of partial rows (fp32, ``stride`` elements apart)."""
    _runtime().launch(family, kernels.expr("sum_partials", _dtype_name(out.dtype)), (math.ceil(N / 256),), (256,),
                      (out, partial, _i32(n_chunks), _i64(stride), _i32(N)))
    return out


def layer_norm_backward(dy, x, weight=None, bias=None, eps=1e-5, mean=None, rstd=None):
    rt = _runtime()
    xp = rt.xp
    dt = _dtype_name(x.dtype)
    xr, dyr = _rows_of(x), _rows_of(dy)
    R, C = xr.shape
    n_chunks, per = kernels.row_chunks(R)
    partial = xp.empty((n_chunks, 2, C), dtype=np.float32)  # per chunk: [sum dy * xhat | sum dy]
    dx = xp.empty(x.shape, dtype=x.dtype)
    m = None if mean is None else xp.ascontiguousarray(mean, dtype=np.float32)
    r = None if rstd is None else xp.ascontiguousarray(rstd, dtype=np.float32)
    rt.launch("layernorm", kernels.expr("layernorm_bwd", dt), (n_chunks,), (_block_for(C),),
              (dx, partial, dyr, xr, None if weight is None else _contiguous(weight), m, r, _i32(R), _i32(C),
               _i32(per), np.float32(eps)))
    if weight is None and bias is None:
        return dx, None, None
    both = _sum_partials("layernorm", xp.empty(2 * C, dtype=x.dtype), partial, n_chunks, 2 * C, 2 * C)
    return dx, None if weight is None else both[:C], None if bias is None else both[C:]


def _act_backward(dx, dy, x, act):
    """dx = dy * act'(x) over contiguous arrays of the same shape."""
    total = x.size
    blocks = max(1, min(math.ceil(total / 256), 1 << 20))
    _runtime().launch("activation", kernels.expr("act_bwd", _dtype_name(x.dtype)), (blocks,), (256,),
                      (dx, dy, x, _i64(total), _i32(act)))
    return dx


def gelu_backward(dy, x, approximate="tanh"):
    xp = _runtime().xp
    dx = xp.empty(x.shape, dtype=x.dtype)
    return _act_backward(dx, _contiguous(dy), _contiguous(x), ACTIVATION_CODES["gelu_tanh" if approximate == "tanh"
                                                                                else "gelu"])


def softmax_backward(dy, y, scale=1.0):
    xp = _runtime().xp
    yr, dyr = _rows_of(y), _rows_of(dy)
    R, N = yr.shape
    dx = xp.empty(y.shape, dtype=y.dtype)
    _runtime().launch("softmax", kernels.expr("softmax_bwd", _dtype_name(y.dtype)), (R,), (_block_for(N),),
                      (dx, dyr, yr, _i32(R), _i32(N), np.float32(scale)))
    return dx


def linear_backward(dy, x, weight, bias=None, activation=None, preact=None):
    """One pass g = dy * act'(preact) (+ dbias's chunk sums), then dx = g W^T, dW = x^T g (cuBLAS)."""
    rt = _runtime()
    xp = rt.xp
    K, N = weight.shape
    dt = _dtype_name(x.dtype)
    x2, dy2 = _rows_of(x), _rows_of(dy)
    M = x2.shape[0]
    act = ACTIVATION_CODES[activation]
    pre2 = None if preact is None else _rows_of(preact)
    g = xp.empty((M, N), dtype=x.dtype) if act else dy2
    db = None
    if bias is not None:
        n_chunks, per = kernels.row_chunks(M)
        partial = xp.empty((n_chunks, N), dtype=np.float32)
        rt.launch("activation", kernels.expr("act_bwd_cols", dt), (n_chunks, math.ceil(N / 256)), (256,),
                  (g if act else None, partial, dy2, pre2, _i32(M), _i32(N), _i32(per), _i32(act)))
        db = _sum_partials("activation", xp.empty(N, dtype=x.dtype), partial, n_chunks, N, N)
    elif act:
        _act_backward(g, dy2, pre2, act)
    dx = _matmul(g, weight.T).reshape(x.shape)
    fortran = weight.flags.f_contiguous and not weight.flags.c_contiguous
    dw = _matmul(g.T, x2).T if fortran else _matmul(x2.T, g)  # (K, N) in the weight's memory order
    return dx, dw, db


def embedding_backward(dout, ids, num_embeddings):
    """dtable (V, C): positions grouped by id with one sort of id * n + position (ties keep position
    order whatever the sort), then one CTA per table row sums its rows in that order."""
    xp = _runtime().xp
    V, C = num_embeddings, dout.shape[-1]
    d2 = _rows_of(dout)
    n = d2.shape[0]
    dtable = xp.empty((V, C), dtype=dout.dtype)
    ids64 = xp.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    order = xp.ascontiguousarray(xp.sort(ids64 * n + xp.arange(n, dtype=np.int64)) % max(n, 1))
    start = xp.zeros(V + 1, dtype=np.int64)
    start[1:] = xp.cumsum(xp.bincount(ids64, minlength=V))
    _runtime().launch("embedding", kernels.expr("embedding_bwd", _dtype_name(dout.dtype)), (V,), (_block_for(C),),
                      (dtable, d2, order, start, _i32(C)))
    return dtable


def cross_entropy(logits, targets, ignore_index=-1, return_grad=False):
    """One CTA per row: per-row losses (fp32) and, on request, dlogits; the mean over the
    non-ignored rows is a float64 sum of the per-row losses."""
    xp = _runtime().xp
    xr = _rows_of(logits)
    R, V = xr.shape
    t = xp.ascontiguousarray(targets, dtype=np.int64).reshape(-1)
    n_valid = int((t != ignore_index).sum())  # the gradient's scale: one device-to-host read
    losses = xp.empty(R, dtype=np.float32)
    dx = xp.empty(logits.shape, dtype=logits.dtype) if return_grad else None
    _runtime().launch("softmax", kernels.expr("cross_entropy_rows", _dtype_name(logits.dtype)), (R,),
                      (_block_for(V),), (dx, losses, xr, t, _i32(V), _i64(ignore_index),
                                         np.float32(1.0 / max(n_valid, 1))))
    loss = xp.asarray(losses.astype(np.float64).sum() / max(n_valid, 1), dtype=np.float32)  # 0-d
    return (loss, dx) if return_grad else loss


# ---------------------------------------------------------------------------------------------
# attention


def _strides_ok(a):
    return (a.shape[-1] == 1 or a.strides[-1] == a.itemsize) and all(s % a.itemsize == 0 for s in a.strides)


def _operand(a):
    return a if _strides_ok(a) else _contiguous(a)


def _el_strides(a):
    """(b, h, l) strides in elements."""
    return tuple(_i64(s // a.itemsize) for s in a.strides[:3])


def _mma_ok(q, k, v, o):
    """attn_mma reads rows with 16-byte cp.async: D = Dv in (64, 128), 8-element strides, aligned bases."""
    rt = _runtime()
    D = q.shape[3]
    if q.dtype == np.float32 or D not in kernels.ATTN_MMA_DIMS or v.shape[3] != D:
        return False
    for a in (q, k, v):
        if any(int(s) % 8 for s in _el_strides(a)) or rt.data_ptr(a) % 16:
            return False
    return True


def _split_count(B, Hq, Lq, Lk):
    """How many key splits a short query block needs to fill the GPU (1 = no split)."""
    if _path == "split":
        return max(1, min(8, math.ceil(Lk / kernels.ATTN_ROWS_BN)))
    if _path != "auto" or Lq > 16 or Lk < 512:
        return 1
    ctas = math.ceil(Lq / kernels.ATTN_ROWS_ROWS) * Hq * B
    want = math.ceil(2 * _runtime().sm_count() / ctas)
    return max(1, min(want, math.ceil(Lk / 256)))


def _attention_args(op, q, k, v, mask, kv_lengths):
    """What the forward and backward kernels both take: the dtype name, q, k, v readable as they
    are, the mask as (base, kind, strides) and kv_lengths clipped to [0, Lk] as int32 (or None)."""
    xp = _runtime().xp
    B, Hq, Lq, D = q.shape
    Lk, Dv = k.shape[2], v.shape[3]
    if max(D, Dv) > MAX_HEAD_DIM:
        raise ValueError(f"{op}: head dims up to {MAX_HEAD_DIM} are supported on the cuda backend, got "
                         f"q {tuple(q.shape)}, v {tuple(v.shape)}")
    dt = _dtype_name(q.dtype)
    q, k, v = _operand(q), _operand(k), _operand(v)
    base, kind, ms = _mask_arg(mask, (B, Hq, Lq, Lk))
    kvl = None if kv_lengths is None else xp.ascontiguousarray(xp.clip(kv_lengths, 0, Lk), dtype=np.int32)
    return dt, q, k, v, base, kind, ms, kvl


def attention(q, k, v, scale, causal=None, mask=None, kv_lengths=None, out=None, return_lse=False,
              return_weights=False):
    """q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) -> out (B, Hq, Lq, Dv) [, lse, weights]."""
    rt = _runtime()
    xp = rt.xp
    B, Hq, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    dt, q, k, v, base, kind, ms, kvl = _attention_args("attention", q, k, v, mask, kv_lengths)
    o = out if (out is not None and _strides_ok(out)) else xp.empty((B, Hq, Lq, Dv), dtype=q.dtype)
    lse = xp.empty((B, Hq, Lq), dtype=np.float32) if return_lse else None
    common_tail = (*_el_strides(q), *_el_strides(k), *_el_strides(v), *_el_strides(o), *(_i64(s) for s in ms))

    use_mma = _path in ("auto", "mma") and _mma_ok(q, k, v, o) and (Lq > 16 or _path == "mma")
    if use_mma:
        smem = kernels.attn_mma_smem(D, q.itemsize)
        rt.launch("attention", kernels.expr("attn_mma", dt, D),
                  (math.ceil(Lq / kernels.ATTN_MMA_BM), Hq, B), (kernels.ATTN_MMA_THREADS,),
                  (q, k, v, o, lse, base, _i32(kind), kvl, _i32(Hq), _i32(Hkv), _i32(Lq), _i32(Lk),
                   np.float32(scale), _i32(CAUSAL_CODES[causal])) + common_tail, smem)
    else:
        dmax = next(d for d in kernels.ATTN_ROWS_DMAX if d >= max(D, Dv))
        smem = kernels.attn_rows_smem(dmax)
        n_split = _split_count(B, Hq, Lq, Lk)
        split_len = kernels.ATTN_ROWS_BN * math.ceil(Lk / n_split / kernels.ATTN_ROWS_BN)
        n_split = max(1, math.ceil(Lk / split_len))
        part = xp.empty((n_split, B, Hq, Lq, Dv + 2), dtype=np.float32) if n_split > 1 else None
        rt.launch("attention", kernels.expr("attn_rows", dt, dmax),
                  (math.ceil(Lq / kernels.ATTN_ROWS_ROWS), Hq, B * n_split), (kernels.ATTN_ROWS_THREADS,),
                  (q, k, v, o, lse, part, base, _i32(kind), kvl, _i32(B), _i32(Hq), _i32(Hkv), _i32(Lq),
                   _i32(Lk), _i32(D), _i32(Dv), np.float32(scale), _i32(CAUSAL_CODES[causal]),
                   _i32(split_len)) + common_tail, smem)
        if part is not None:
            ob, oh, ol = _el_strides(o)
            rt.launch("attention", kernels.expr("attn_combine", dt), (Lq, Hq, B), (128,),
                      (o, lse, part, _i32(n_split), _i32(B), _i32(Hq), _i32(Lq), _i32(Dv), ob, oh, ol))
    if out is not None and o is not out:
        out[...] = o
        o = out
    result = [o]
    if return_lse:
        result.append(lse)
    if return_weights:
        result.append(_weights(q, k, scale, causal, mask, kv_lengths))
    return tuple(result) if len(result) > 1 else result[0]


def _weights(q, k, scale, causal, mask, kv_lengths):
    """The attention pattern (B, Hq, Lq, Lk), materialised: float32 scores, then our softmax kernel."""
    xp = _runtime().xp
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    kk = xp.repeat(k, Hq // Hkv, axis=1) if Hq != Hkv else k
    s = xp.matmul(q.astype(np.float32), xp.swapaxes(kk.astype(np.float32), -1, -2))  # (B, Hq, Lq, Lk)
    if kv_lengths is not None:  # keys j < n[b]; bottom-right: the diagonal at n[b] (j <= i + n[b] - Lq)
        n = xp.asarray(kv_lengths).astype(np.int64)[:, None, None, None]  # (B, 1, 1, 1)
        i, j = xp.arange(Lq)[:, None], xp.arange(Lk)[None, :]
        valid = j < n                                                      # (B, 1, 1, Lk)
        if causal is not None:
            valid = valid & (j <= i + (n - Lq if causal == "bottom_right" else 0))  # (B, 1, Lq, Lk)
            causal = None
        if mask is None:
            mask = valid
        elif mask.dtype == np.bool_:
            mask = mask & valid
        else:
            mask = xp.where(valid, mask.astype(np.float32), np.float32(-np.inf))
    if mask is not None and mask.dtype != np.bool_:
        mask = mask.astype(np.float32)
    p = softmax(xp.ascontiguousarray(s), mask=mask, causal=causal, scale=scale)
    return p.astype(q.dtype)


# ---------------------------------------------------------------------------------------------
# attention backward


def _attention_backward_kernels(q, k, v, dout):
    """The one place the attention backward picks its kernels: "mma" (attn_bwd_rowdot, then
    attn_bwd_dq_mma and attn_bwd_dkdv_mma; float16/bfloat16 and the layouts attn_mma takes: D = Dv
    in (64, 128), 8-element strides, 16-byte aligned bases) or "rows" (attn_bwd_dq, then
    attn_bwd_dkdv; CUDA cores, every dtype and shape). set_path("rows") forces the CUDA-core pair."""
    if _path != "rows" and _mma_ok(q, k, v, dout) and _runtime().data_ptr(dout) % 16 == 0:
        return "mma"
    return "rows"


def attention_backward(dout, q, k, v, out, lse, scale, causal=None, mask=None, kv_lengths=None):
    """(dq, dk, dv) of attention (attention.cu's backward kernels, chosen by _attention_backward_kernels).

    dout, out (B, Hq, Lq, Dv) and lse (B, Hq, Lq, float32) from the forward; q, k, v keep their
    strides (last axis contiguous). No atomics: the same bits on every run.
    """
    rt = _runtime()
    xp = rt.xp
    B, Hq, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    dt, q, k, v, base, kind, ms, kvl = _attention_args("attention_backward", q, k, v, mask, kv_lengths)
    dout, out = _contiguous(dout), _contiguous(out)
    lse = xp.ascontiguousarray(lse, dtype=np.float32)
    dq = xp.empty((B, Hq, Lq, D), dtype=q.dtype)
    dk = xp.empty((B, Hkv, Lk, D), dtype=q.dtype)
    dv = xp.empty((B, Hkv, Lk, Dv), dtype=q.dtype)
    drow = xp.empty((B, Hq, Lq), dtype=np.float32)  # D_i = dO_i . O_i, read by the dq and dk/dv kernels
    tail = (*_el_strides(q), *_el_strides(k), *_el_strides(v), *(_i64(s) for s in ms))
    if _attention_backward_kernels(q, k, v, dout) == "mma":
        rows = kernels.ATTN_BWD_ROWDOT_ROWS
        rt.launch("attention", kernels.expr("attn_bwd_rowdot", dt), (math.ceil(B * Hq * Lq / rows),), (32 * rows,),
                  (dout, out, lse, drow, _i32(B * Hq * Lq), _i32(Dv)))
        shapes = (_i32(Hq), _i32(Hkv), _i32(Lq), _i32(Lk), np.float32(scale), _i32(CAUSAL_CODES[causal])) + tail
        rt.launch("attention", kernels.expr("attn_bwd_dq_mma", dt, D), (math.ceil(Lq / kernels.ATTN_MMA_BM), Hq, B),
                  (kernels.ATTN_MMA_THREADS,), (dout, q, k, v, lse, drow, dq, base, _i32(kind), kvl) + shapes,
                  kernels.attn_bwd_dq_mma_smem(D))
        rt.launch("attention", kernels.expr("attn_bwd_dkdv_mma", dt, D), (math.ceil(Lk / kernels.ATTN_MMA_BN), Hkv, B),
                  (kernels.ATTN_MMA_THREADS,), (dout, q, k, v, lse, drow, dk, dv, base, _i32(kind), kvl) + shapes,
                  kernels.attn_bwd_dkdv_mma_smem(D))
        return dq, dk, dv
    dmax = next(d for d in kernels.ATTN_ROWS_DMAX if d >= max(D, Dv))
    shapes = (_i32(Hq), _i32(Hkv), _i32(Lq), _i32(Lk), _i32(D), _i32(Dv), np.float32(scale),
              _i32(CAUSAL_CODES[causal])) + tail
    rows = kernels.ATTN_ROWS_ROWS
    rt.launch("attention", kernels.expr("attn_bwd_dq", dt, dmax), (math.ceil(Lq / rows), Hq, B), (32 * rows,),
              (dout, q, k, v, out, lse, dq, drow, base, _i32(kind), kvl) + shapes)
    rt.launch("attention", kernels.expr("attn_bwd_dkdv", dt, dmax), (math.ceil(Lk / rows), Hkv, B), (32 * rows,),
              (dout, q, k, v, lse, drow, dk, dv, base, _i32(kind), kvl) + shapes)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# Llama-family ops (arguments validated by qkv._ops): rmsnorm_rows / rmsnorm_bwd (layernorm.cu),
# rope_rows (rope.cu), swiglu / swiglu_bwd (activation.cu)


def rms_norm(x, weight=None, eps=1e-6, out=None, return_stats=False):
    rt = _runtime()
    xr = _rows_of(x)
    R, C = xr.shape
    y, out = _dest(out, x.shape, x.dtype)
    rstd = rt.xp.empty(x.shape[:-1], dtype=np.float32) if return_stats else None
    rt.launch("layernorm", kernels.expr("rmsnorm_rows", _dtype_name(x.dtype)), (R,), (_block_for(C),),
              (y, rstd, xr, None if weight is None else _contiguous(weight), _i32(R), _i32(C), np.float32(eps)))
    return (_finish(y, out), rstd) if return_stats else _finish(y, out)


def rms_norm_backward(dy, x, weight=None, rstd=None, eps=1e-6):
    rt = _runtime()
    xp = rt.xp
    xr, dyr = _rows_of(x), _rows_of(dy)
    R, C = xr.shape
    n_chunks, per = kernels.row_chunks(R)
    partial = xp.empty((n_chunks, C), dtype=np.float32) if weight is not None else None  # sums of dy * xhat
    dx = xp.empty(x.shape, dtype=x.dtype)
    r = None if rstd is None else xp.ascontiguousarray(rstd, dtype=np.float32)
    rt.launch("layernorm", kernels.expr("rmsnorm_bwd", _dtype_name(x.dtype)), (n_chunks,), (_block_for(C),),
              (dx, partial, dyr, xr, None if weight is None else _contiguous(weight), r, _i32(R), _i32(C), _i32(per),
               np.float32(eps)))
    if weight is None:
        return dx, None
    return dx, _sum_partials("layernorm", xp.empty(C, dtype=x.dtype), partial, n_chunks, C, C)


_inv_freq_tables = {}  # (runtime, device, bytes) -> the inverse frequencies on the device


def _device_table(inv_freq):
    """qkv._rope.inv_freq's (D/2,) float64 vector on the device, copied once per distinct table."""
    rt = _runtime()
    xp = rt.xp
    dev = xp.cuda.Device().id if hasattr(xp, "cuda") else None
    key = (id(rt), dev, inv_freq.tobytes())
    t = _inv_freq_tables.get(key)
    if t is None:
        if len(_inv_freq_tables) >= 64:
            _inv_freq_tables.clear()
        t = _inv_freq_tables[key] = xp.asarray(np.ascontiguousarray(inv_freq, dtype=np.float64))
    return t


def rope(x, positions, inv_freq, out=None, inverse=False):
    """x (B, L, H, D) read at its own strides (last axis contiguous); out=x rotates in place."""
    rt = _runtime()
    xp = rt.xp
    B, L, H, D = x.shape
    if D > 2 * kernels.ROPE_MAX_HALF:
        raise ValueError(f"rope: the cuda backend takes head dims up to {2 * kernels.ROPE_MAX_HALF}, got x of "
                         f"shape {tuple(x.shape)}")
    src = x if x.strides[-1] == x.itemsize else xp.ascontiguousarray(x)
    y = xp.empty(x.shape, dtype=x.dtype) if out is None else out
    dst = y if y.strides[-1] == y.itemsize else xp.empty(x.shape, dtype=x.dtype)
    pos = xp.ascontiguousarray(positions, dtype=np.int64)
    ps = (0, 1) if pos.ndim == 1 else (L, 1)
    xs = tuple(s // x.itemsize for s in src.strides[:3])
    os_ = tuple(s // x.itemsize for s in dst.strides[:3])
    rt.launch("rope", kernels.expr("rope_rows", _dtype_name(x.dtype)), (B * L,), (_block_for(H * D // 2),),
              (dst, src, pos, _device_table(inv_freq), _i32(L), _i32(H), _i32(D), *map(_i64, xs), *map(_i64, os_),
               *map(_i64, ps), _i32(bool(inverse))))
    if dst is not y:
        y[...] = dst
    return y


def _swiglu(y, gate, up):
    """y (R, N) C-contiguous = silu(gate) * up, gate and up (R, N) with contiguous rows."""
    R, N = y.shape
    total = R * N
    blocks = max(1, min(math.ceil(total / 256), 1 << 20))
    _runtime().launch("activation", kernels.expr("swiglu", _dtype_name(y.dtype)), (blocks,), (256,),
                      (y, gate, up, _i64(total), _i32(N), _i64(gate.strides[0] // gate.itemsize),
                       _i64(up.strides[0] // up.itemsize)))
    return y


def swiglu(gate, up, out=None):
    y, out = _dest(out, gate.shape, gate.dtype)
    n = gate.shape[-1] if gate.ndim else 1
    _swiglu(y.reshape(-1, n), _contiguous(gate).reshape(-1, n), _contiguous(up).reshape(-1, n))
    return _finish(y, out)


def swiglu_backward(dy, gate, up):
    xp = _runtime().xp
    dg, du = xp.empty(gate.shape, dtype=gate.dtype), xp.empty(gate.shape, dtype=gate.dtype)
    total = gate.size
    blocks = max(1, min(math.ceil(total / 256), 1 << 20))
    _runtime().launch("activation", kernels.expr("swiglu_bwd", _dtype_name(gate.dtype)), (blocks,), (256,),
                      (dg, du, _contiguous(dy), _contiguous(gate), _contiguous(up), _i64(total)))
    return dg, du


def _linear_swiglu(x, weight, bias, out, return_preact):
    """weight (K, 2N) = [gate | up]: the cuBLAS GEMM (+ bias) into (R, 2N), then one pass of the
    SwiGLU epilogue reading it (each element once) into y (R, N)."""
    xp = _runtime().xp
    N = weight.shape[1] // 2
    x2 = _rows_of(x)                                     # (R, K)
    pre = xp.empty(x.shape[:-1] + (2 * N,), dtype=x.dtype)
    p2 = pre.reshape(-1, 2 * N)                          # (R, 2N)
    _matmul(x2, weight, out=p2)
    if bias is not None:
        _bias_act(p2, p2, _contiguous(bias), ACTIVATION_CODES[None])
    y, out = _dest(out, x.shape[:-1] + (N,), x.dtype)
    _swiglu(y.reshape(-1, N), p2[:, :N], p2[:, N:])
    y = _finish(y, out)
    return (y, pre) if return_preact else y
