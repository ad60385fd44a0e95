"""The measurements behind ``qkv bench``: headline shapes, timing, work counts, rooflines, the table.

For people without asv: one command answers "how fast is qkv here, against what?". For each headline
case and each implementation that can run here (qkv's ``cpu`` and ``cuda`` backends, the ``numpy``
reference, and torch on the CPU when it is installed) it
1. checks the output against the NumPy oracle (max |error|, reported with the time);
2. times the call: one warm-up, then repeats until a time budget is spent, median;
3. converts to GFLOP/s (GEMM-like work) or GB/s (memory-bound work), to % of this machine's FMA peak
   and to speed-ups against NumPy and torch.
The FMA peak is measured in the same run (before and after the cases, the best of both) at the SIMD
level qkv's kernels use: independent FMA chains in registers (csrc/fma_peak.c), on one thread and
on qkv's threads. It is the roofline of the arithmetic, whatever BLAS is loaded: an SGEMM is only a
reference row (``sgemm``), since OpenBLAS may run a narrower kernel than qkv (OPENBLAS_CORETYPE=Haswell
runs AVX2 on an AVX-512 machine), and a % of it would overstate qkv. The header names the BLAS
kernel that served each SGEMM row (threadpoolctl).
Work counts: GEMM 2*M*K*N; attention 4*B*H*Lq*Lk*D, halved for square causal (FlashAttention's
convention). Backward cases (``*_bwd``): linear_backward is two GEMMs of the forward's size, attention
backward 2.5x the forward (FlashAttention's count); layer norm and GELU backward are memory-bound (GB/s).
A backward's forward (and, for torch, its autograd graph) runs outside the timed call: torch times
``y.backward(dy, retain_graph=True)`` alone. The asv suite (benchmarks/benchmarks/common.py) imports
Impl, the work counts, the torch backward call and the timer from here.

qkv's ops get a preallocated ``out=`` (the hot-path usage); torch allocates its outputs. A fresh
large output costs page faults on every call, so the allocator setting is reported too.
"""

import importlib
import os
import platform
import statistics
import time

import numpy as np

IMPLS = ("cpu", "cuda", "numpy", "torch")


# ---------------------------------------------------------------------------------------------
# work counts


def attention_flops(B, Hq, Lq, Lk, D, causal):
    """4*B*Hq*Lq*Lk*D, halved for square causal; bottom-right causal with Lq != Lk counts visible pairs."""
    if not causal:
        pairs = Lq * Lk
    elif Lq == Lk:
        pairs = Lq * Lk / 2
    else:
        i = np.arange(Lq)
        pairs = float(np.clip(i + (Lk - Lq) + 1, 0, Lk).sum())
    return 4.0 * B * Hq * pairs * D


def linear_flops(M, K, N):
    return 2.0 * M * K * N


def attention_backward_flops(B, Hq, Lq, Lk, D, causal):
    """2.5x the forward's count (FlashAttention's: five GEMM-like products against the forward's two)."""
    return 2.5 * attention_flops(B, Hq, Lq, Lk, D, causal)


def linear_backward_flops(M, K, N):
    """dx = g @ W.T and dW = x.T @ g: two GEMMs of the forward's size (the bias and activation terms are O(M*N))."""
    return 2 * linear_flops(M, K, N)


def max_abs_err(actual, expected):
    """max |actual - expected|, computed in float64. A backward's tuple of gradients is compared
    element by element and the largest error counts (None, a gradient not asked for, must match None)."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(actual, (tuple, list)) or len(actual) != len(expected):
            raise ValueError(f"max_abs_err: expected {len(expected)} gradients, got {type(actual).__name__}")
        errs = []
        for i, (a, e) in enumerate(zip(actual, expected)):
            if (a is None) != (e is None):
                raise ValueError(f"max_abs_err: gradient {i} is {'None' if a is None else 'an array'}, expected "
                                 f"{'None' if e is None else 'an array'}")
            if e is not None:
                errs.append(max_abs_err(a, e))
        return max(errs, default=0.0)
    return float(np.max(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))))


# ---------------------------------------------------------------------------------------------
# implementations


class Unavailable(NotImplementedError):
    """This implementation cannot run this case here; the message says why (asv counts it a skip)."""


class Impl:
    """One implementation under test: array conversion, synchronisation and the ops namespace.

    ``ops`` is the ``qkv`` module for qkv's backends (run the calls inside ``context()``, which forces
    the backend) and ``torch`` for torch; ``asarray(a)`` moves a NumPy array to the implementation's
    device and dtype; ``sync()`` waits for queued device work. Raises Unavailable when it cannot run.
    """

    def __init__(self, name, dtype="float32"):
        import qkv

        self.name, self.dtype = name, np.dtype(dtype)
        self.is_torch = name == "torch"
        self.xp = np
        if self.is_torch:
            try:
                import torch
            except ImportError:
                raise Unavailable("torch is not installed") from None
            if self.dtype == np.float16:
                raise Unavailable("torch CPU baseline runs float32/float64 only")
            torch.set_num_threads(qkv.get_num_threads())  # same thread count on both sides
            self.ops, self.tdtype = torch, getattr(torch, self.dtype.name)
            return
        info = qkv.backends().get(name)
        if info is None:
            raise Unavailable(f"qkv has no backend {name!r} in this version")
        if not info["available"]:
            raise Unavailable(info["reason"])
        if self.dtype not in self._module().DTYPES:
            raise Unavailable(f"backend {name!r} does not support {self.dtype}")
        if name == "numpy" and self.dtype == np.float16:
            raise Unavailable("the NumPy reference computes in float64 whatever the dtype: float16 adds nothing")
        self.ops = qkv
        if name == "cuda":
            import cupy

            self.xp = cupy

    def _module(self):
        from qkv import _backend

        return importlib.import_module(_backend._MODULES[self.name])

    def require_op(self, op):
        """Raise Unavailable when this qkv backend has no ``op`` (it lands in a later version)."""
        if not self.is_torch and not hasattr(self._module(), op):
            raise Unavailable(f"backend {self.name!r} has no {op} in this version of qkv")

    def asarray(self, a):
        if self.is_torch:
            return self.ops.from_numpy(np.array(a, dtype=self.dtype))  # a writeable copy
        return self.xp.asarray(np.asarray(a, dtype=self.dtype))

    def empty(self, shape):
        return self.xp.empty(shape, dtype=self.dtype)

    def to_numpy(self, a):
        if isinstance(a, (tuple, list)):  # a backward's gradients
            return tuple(None if g is None else self.to_numpy(g) for g in a)
        if self.is_torch:
            return a.detach().numpy()
        if self.name == "cuda":
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def sync(self):
        if self.name == "cuda":
            self.xp.cuda.get_current_stream().synchronize()

    def context(self):
        """A ``with`` block in which calls run on this implementation (qkv's backend forced; torch without autograd)."""
        if self.is_torch:
            return self.ops.no_grad()
        return self.ops.use_backend(self.name)


# ---------------------------------------------------------------------------------------------
# headline cases


def _rand(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _torch_linear(torch, w, b):
    """A torch.nn.Linear holding w (in, out) and b: what torch users run for qkv.linear."""
    fc = torch.nn.Linear(*w.shape)
    with torch.no_grad():
        fc.weight.copy_(w.T)
        fc.bias.copy_(b)
    return fc


class Case:
    """One headline shape: inputs, the work it does, and how each implementation runs it."""

    name = shape = op = ""
    flops = 0.0  # useful floating-point work per call (0: memory-bound, report GB/s)
    nbytes = 0.0  # bytes that must move per call
    check_shape = None  # where the reference is too slow at ``shape``: the smaller shape the oracle checks
    not_timed = {}  # {implementation: why this case does not time it}

    def build(self, impl):
        """A zero-argument callable that runs the case once on impl and returns the output."""
        raise NotImplementedError

    def build_check(self, impl):
        """The callable whose output is compared with oracle(), at ``check_shape`` (set it and override)."""
        raise NotImplementedError

    def oracle(self):
        import qkv

        build = self.build if self.check_shape is None else self.build_check
        with qkv.use_backend("numpy"):
            return build(Impl("numpy"))()  # a fresh output: build() gives each implementation its own


class SoftmaxMasked(Case):
    name, shape, op = "softmax_masked", "causal [12*512, 512]", "softmax"

    def __init__(self, rng):
        self.x = _rand(rng, (12, 512, 512), 4.0)  # (H, L, L) scores: 12*512 rows of 512
        self.nbytes = 2 * self.x.nbytes

    def build(self, impl):
        x = impl.asarray(self.x)
        if impl.is_torch:
            torch = impl.ops
            add = torch.triu(torch.full((512, 512), float("-inf")), diagonal=1)
            return lambda: torch.softmax(x + add, dim=-1)
        out = impl.empty(x.shape)
        return lambda: impl.ops.softmax(x, causal=True, out=out)


class LayerNorm(Case):
    name, shape, op = "layer_norm", "[512, 768]", "layer_norm"

    def __init__(self, rng):
        self.x, self.w, self.b = _rand(rng, (512, 768)), 1 + _rand(rng, (768,), 0.1), _rand(rng, (768,), 0.1)
        self.nbytes = 2 * self.x.nbytes

    def build(self, impl):
        x, w, b = (impl.asarray(a) for a in (self.x, self.w, self.b))
        if impl.is_torch:
            F = impl.ops.nn.functional
            return lambda: F.layer_norm(x, (768,), w, b, eps=1e-5)
        out = impl.empty(x.shape)
        return lambda: impl.ops.layer_norm(x, w, b, eps=1e-5, out=out)


class LinearGELU(Case):
    name, shape, op = "linear_gelu", "[512, 768] x [768, 3072]", "linear"
    flops = linear_flops(512, 768, 3072)

    def __init__(self, rng):
        self.x, self.w, self.b = _rand(rng, (512, 768)), _rand(rng, (768, 3072), 768**-0.5), _rand(rng, (3072,), 0.1)
        self.nbytes = self.x.nbytes + self.w.nbytes + 512 * 3072 * 4

    def build(self, impl):
        x, w, b = (impl.asarray(a) for a in (self.x, self.w, self.b))
        if impl.is_torch:
            torch = impl.ops
            fc = _torch_linear(torch, w, b)
            return lambda: torch.nn.functional.gelu(fc(x), approximate="tanh")
        out = impl.empty((512, 3072))
        return lambda: impl.ops.linear(x, w, b, activation="gelu_tanh", out=out)


def torch_leaves(arrays):
    """The tensors, set to collect gradients (impl.asarray gives each caller its own copy)."""
    return [a.requires_grad_() for a in arrays]


def torch_backward(y, dy, leaves):
    """The timed torch call of a backward case (qkv bench's and asv's): ``y.backward(dy)`` on the graph
    built outside it, returning the leaves' gradients (cleared first: autograd accumulates)."""

    def fn():
        for t in leaves:
            t.grad = None
        y.backward(dy, retain_graph=True)
        return tuple(t.grad for t in leaves)

    return fn


class LayerNormBackward(LayerNorm):
    """layer_norm_backward with the forward's mean and rstd: reads dy and x, writes dx (and the (C,)
    dweight, dbias)."""

    name, shape, op = "layer_norm_bwd", "[512, 768]", "layer_norm_backward"

    def __init__(self, rng):
        super().__init__(rng)
        self.dy = _rand(rng, (512, 768))
        self.nbytes = 3 * self.x.nbytes

    def build(self, impl):
        x, w, b, dy = (impl.asarray(a) for a in (self.x, self.w, self.b, self.dy))
        if impl.is_torch:
            torch = impl.ops
            leaves = torch_leaves((x, w, b))
            with torch.enable_grad():
                y = torch.nn.functional.layer_norm(x, (768,), w, b, eps=1e-5)
            return torch_backward(y, dy, leaves)
        _, mean, rstd = impl.ops.layer_norm(x, w, b, eps=1e-5, return_stats=True)
        return lambda: impl.ops.layer_norm_backward(dy, x, w, b, eps=1e-5, mean=mean, rstd=rstd)


class GELUBackward(Case):
    """gelu_backward (tanh form) over GPT-2 small's MLP activations: reads dy and x, writes dx."""

    name, shape, op = "gelu_bwd", "[512, 3072]", "gelu_backward"

    def __init__(self, rng):
        self.x, self.dy = _rand(rng, (512, 3072), 2.0), _rand(rng, (512, 3072))
        self.nbytes = 3 * self.x.nbytes

    def build(self, impl):
        x, dy = impl.asarray(self.x), impl.asarray(self.dy)
        if impl.is_torch:
            torch = impl.ops
            leaves = torch_leaves((x,))
            with torch.enable_grad():
                y = torch.nn.functional.gelu(x, approximate="tanh")
            grads = torch_backward(y, dy, leaves)
            return lambda: grads()[0]  # dx, as qkv returns it
        return lambda: impl.ops.gelu_backward(dy, x, approximate="tanh")


class LinearGELUBackward(LinearGELU):
    """linear_backward through the GELU: g = dy * gelu'(preact) and db in one pass, then dx and dW, two
    GEMMs of the forward's size. dW comes back (in, out), torch's transposed to match."""

    name, shape, op = "linear_gelu_bwd", "[512, 768] x [768, 3072]", "linear_backward"
    flops = linear_backward_flops(512, 768, 3072)

    def __init__(self, rng):
        super().__init__(rng)
        self.dy = _rand(rng, (512, 3072))
        # read dy, preact, x, W; write dx, dW
        self.nbytes = 2 * (self.dy.nbytes + self.x.nbytes + self.w.nbytes)

    def build(self, impl):
        x, w, b, dy = (impl.asarray(a) for a in (self.x, self.w, self.b, self.dy))
        if impl.is_torch:
            torch = impl.ops
            fc = _torch_linear(torch, w, b)
            (x,) = torch_leaves((x,))
            with torch.enable_grad():
                y = torch.nn.functional.gelu(fc(x), approximate="tanh")
            grads = torch_backward(y, dy, [x, fc.weight, fc.bias])

            def fn():
                dx, dwt, db = grads()
                return dx, dwt.T, db  # torch's weight is (out, in)

            return fn
        _, preact = impl.ops.linear(x, w, b, activation="gelu_tanh", return_preact=True)
        return lambda: impl.ops.linear_backward(dy, x, w, b, activation="gelu_tanh", preact=preact)


class Attention(Case):
    op = "attention"

    def __init__(self, rng, Lq, Lk, causal, name, shape, H=12, D=64):
        self.name, self.shape, self.causal = name, shape, causal
        self.q = _rand(rng, (1, H, Lq, D))  # (B, H, Lq, D)
        self.k, self.v = _rand(rng, (1, H, Lk, D)), _rand(rng, (1, H, Lk, D))  # (B, H, Lk, D)
        self.flops = attention_flops(1, H, Lq, Lk, D, causal)
        self.nbytes = self.q.nbytes * 2 + self.k.nbytes + self.v.nbytes
        self.square = Lq == Lk

    def build(self, impl):
        q, k, v = (impl.asarray(a) for a in (self.q, self.k, self.v))
        if impl.is_torch:
            sdpa = impl.ops.nn.functional.scaled_dot_product_attention
            # torch's is_causal is top-left aligned: the same as ours for Lq == Lk; for one query
            # against a cache (bottom-right) every key is visible
            is_causal = self.causal and self.square
            return lambda: sdpa(q, k, v, is_causal=is_causal)
        out = impl.empty(q.shape)
        causal = self.causal
        return lambda: impl.ops.attention(q, k, v, causal=causal, out=out)


class AttentionBackward(Case):
    """attention_backward from the forward's out and lse (made outside the timed call, by each
    implementation's own forward). The float64 reference materialises several (H, L, L) arrays and
    takes seconds a call at L = 1024: it is not timed, and the oracle checks every implementation at
    L = check_L on the first check_L positions of the same inputs (causal: that prefix is itself a
    causal attention)."""

    op = "attention_backward"

    def __init__(self, rng, L, causal, name, H=12, D=64, check_L=256):
        self.name, self.causal, self.L, self.check_L = name, causal, L, min(check_L, L)
        self.shape, self.check_shape = f"B=1 H={H} L={L} D={D}", f"L={self.check_L}"
        self.not_timed = {"numpy": f"not timed (seconds a call at this L); the oracle at L={self.check_L}"}
        # dout, q, k, v (B, H, L, D)
        self.dout, self.q, self.k, self.v = (_rand(rng, (1, H, L, D)) for _ in range(4))
        self.flops = attention_backward_flops(1, H, L, L, D, causal)
        self.nbytes = 8 * self.q.nbytes  # read q, k, v, out, dout; write dq, dk, dv

    def build(self, impl, L=None):
        L = self.L if L is None else L
        dout, q, k, v = (impl.asarray(a[:, :, :L]) for a in (self.dout, self.q, self.k, self.v))
        causal = self.causal
        if impl.is_torch:
            torch = impl.ops
            leaves = torch_leaves((q, k, v))
            with torch.enable_grad():  # is_causal is top-left: ours for Lq == Lk
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return torch_backward(out, dout, leaves)
        out, lse = impl.ops.attention(q, k, v, causal=causal, return_lse=True)
        return lambda: impl.ops.attention_backward(dout, q, k, v, out, lse, causal=causal)

    def build_check(self, impl):
        return self.build(impl, self.check_L)


class Decode(Attention):
    """Memory-bound: one query reads the whole K/V cache; GB/s is the figure to watch."""

    def __init__(self, rng):
        super().__init__(rng, 1, 4096, True, "decode", "Lq=1 Lk=4096 H=12 D=64")
        self.flops = 0.0


class SGEMM(Case):
    """The BLAS reference, float32 [n, n] x [n, n]: ``numpy`` is NumPy's matmul (NumPy's BLAS),
    ``cpu`` qkv.linear (SciPy's BLAS), ``cuda`` qkv.linear (cuBLAS), ``torch`` torch.matmul. Not a
    qkv kernel: it shows how far the loaded BLAS gets against the same FMA peak."""

    name, op = "sgemm", "linear"

    def __init__(self, rng, n):
        self.shape = f"M=K=N={n}"
        self.a, self.b = _rand(rng, (n, n)), _rand(rng, (n, n), n**-0.5)
        self.flops = linear_flops(n, n, n)
        self.nbytes = 3 * self.a.nbytes

    def build(self, impl):
        a, b = impl.asarray(self.a), impl.asarray(self.b)
        if impl.is_torch:
            return lambda: impl.ops.matmul(a, b)
        out = impl.empty(self.a.shape)
        if impl.name == "numpy":
            return lambda: np.matmul(a, b, out=out)
        return lambda: impl.ops.linear(a, b, out=out)

    def oracle(self):
        return self.a.astype(np.float64) @ self.b.astype(np.float64)


class QuantDecode(Case):
    """One decode row through GPT-2 small's LM head with bf16 or int8 weights (qkv.quantize_weight):
    memory-bound, the weight streamed once, so GB/s is the figure (compare sgemv's float32 bytes).
    torch: F.linear with bfloat16 weights (no int8 blocks there); the oracle dequantises in float64."""

    op = "linear"

    def __init__(self, rng, fmt):
        import qkv

        self.fmt, self.name, self.shape = fmt, f"linear_{fmt}_decode", "[1, 768] x [768, 50257]"
        self.x, w = _rand(rng, (1, 768)), _rand(rng, (768, 50257), 0.02)
        self.wq = qkv.quantize_weight(w, fmt)
        self.w_bf16 = w.T.copy() if fmt == "bf16" else None  # (out, in) for torch
        self.nbytes = self.wq.nbytes + self.x.nbytes + 50257 * 4
        self.not_timed = {"numpy": "the oracle (dequantises in float64): not timed",
                          "cuda": "QuantizedWeight runs on the CPU"}
        if fmt != "bf16":
            self.not_timed["torch"] = "torch has no Q8_0 (32-block int8) weights"

    def build(self, impl):
        if impl.is_torch:
            torch = impl.ops
            x = torch.from_numpy(self.x).to(torch.bfloat16)
            w = torch.from_numpy(self.w_bf16).to(torch.bfloat16)
            return lambda: torch.nn.functional.linear(x, w).float()
        out = np.empty((1, 50257), np.float32)
        return lambda: impl.ops.linear(self.x, self.wq, out=out)


def headline_cases(seed=0, gemm_n=2048):
    rng = np.random.default_rng(seed)
    forward = [
        SoftmaxMasked(rng),
        LayerNorm(rng),
        LinearGELU(rng),
        Attention(rng, 1024, 1024, False, "attention", "B=1 H=12 L=1024 D=64"),
        Attention(rng, 1024, 1024, True, "attention_causal", "B=1 H=12 L=1024 D=64"),
        Decode(rng),
        SGEMM(rng, gemm_n),
    ]
    rng_q = np.random.default_rng([seed, 2])  # the low-precision cases' own stream
    forward += [QuantDecode(rng_q, "bf16"), QuantDecode(rng_q, "int8")]
    rng = np.random.default_rng([seed, 1])  # the backward cases' own stream: the forward inputs stay as they were
    backward = [
        LayerNormBackward(rng),
        GELUBackward(rng),
        LinearGELUBackward(rng),
        AttentionBackward(rng, 1024, True, "attention_causal_bwd"),
    ]
    by_name = {c.name: c for c in forward + backward}
    return [by_name[n] for n in CASE_NAMES]


# the table's order: each backward after its forward
CASE_NAMES = ("softmax_masked", "layer_norm", "layer_norm_bwd", "gelu_bwd", "linear_gelu", "linear_gelu_bwd",
              "attention", "attention_causal", "attention_causal_bwd", "decode", "linear_bf16_decode",
              "linear_int8_decode", "sgemm")


# ---------------------------------------------------------------------------------------------
# timing and rooflines


def time_call(fn, sync, budget, min_calls, best=False, max_calls=1000):
    """Median (or with ``best``, minimum) seconds of fn() after one warm-up; repeats until ``budget``
    seconds and ``min_calls``, at most ``max_calls``."""
    fn()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < budget and len(times) < max_calls):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times) if best else statistics.median(times)


def fma_peak(threads, seconds):
    """This machine's float32 FMA peak now, at the SIMD level qkv's kernels use (QKV_SIMD caps it):
    {"simd", "threads", "gflops" (on ``threads``), "gflops_1thread"}. Best of 3 calls of ``seconds``."""
    from qkv import _config
    from qkv._cpu import _runtime

    level = _config.simd_level()
    return {"simd": _config.simd_name(), "threads": threads,
            "gflops": _runtime.fma_peak_gflops(level, threads, seconds),
            "gflops_1thread": _runtime.fma_peak_gflops(level, 1, seconds)}


BLAS_NAMES = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS", "flexiblas": "FlexiBLAS"}


def blas_kernels(blas):
    """Which BLAS served which SGEMM row, from threadpoolctl's list (``machine_facts()["blas"]``):
    {"numpy.matmul": "OpenBLAS 0.3.31 Haswell, 2 threads", "qkv.linear": ...}. NumPy and SciPy each
    ship their own OpenBLAS (found by its path); a single BLAS serves both."""
    loaded = [b for b in blas if "error" not in b]

    def label(b):
        name = BLAS_NAMES.get(str(b.get("library")).lower(), b.get("library"))
        return f"{name} {b.get('version')} {b.get('kernel')}, {b.get('threads')} threads"

    out = {}
    for user, package in (("numpy.matmul", "numpy"), ("qkv.linear", "scipy")):
        mine = [b for b in loaded if f"{package}." in (b.get("path") or "") or f"{os.sep}{package}{os.sep}" in
                (b.get("path") or "")]
        if len(mine) == 1 or len(loaded) == 1:
            out[user] = label((mine or loaded)[0])
        else:
            out[user] = "unknown (" + ("; ".join(label(b) for b in loaded) or "threadpoolctl found no BLAS") + ")"
    return out


# ---------------------------------------------------------------------------------------------
# the run


# environment variables that change what runs or how fast (set by the user, or by qkv._env's defaults)
ENV_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OPENBLAS_L2_SIZE",
            "OPENBLAS_THREAD_TIMEOUT", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "QKV_SIMD")


def machine_facts():
    """Versions, threads, the BLAS kernels loaded (threadpoolctl) and the allocator setting."""
    from qkv.commands.info import collect

    facts = collect()
    facts["cpu_model"] = cpu_model()
    libc = platform.libc_ver()
    facts["allocator"] = {
        "libc": " ".join(libc).strip() or "unknown",
        **{k: os.environ.get(k, "default") for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                                                     "MALLOC_ARENA_MAX")},
        "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""),
    }
    facts["env"] = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    try:
        import torch

        facts["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}
    except ImportError:
        facts["torch"] = None
    facts["date_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    return facts


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(quick=False, cases=None, impls=IMPLS):
    """Measure; returns the report dict that ``qkv bench --json`` writes. A progress bar on stderr
    while a person watches (qkv._progress: silent off a terminal)."""
    import qkv
    from qkv._progress import progress_bar

    budget, min_calls, fma_seconds = (0.15, 3, 0.02) if quick else (1.0, 7, 0.1)
    chosen = [c for c in headline_cases(gemm_n=1024 if quick else 2048) if cases is None or c.name in cases]
    threads = qkv.get_num_threads()
    results = []
    with progress_bar(total=2 + len(chosen) * len(impls), desc="qkv bench", unit="step") as bar:
        bar.set_postfix_str("FMA peak")
        peaks = [fma_peak(threads, fma_seconds)]
        bar.update()
        impl_objs = {}
        for name in impls:
            try:
                impl_objs[name] = Impl(name)
            except Unavailable as exc:
                impl_objs[name] = exc
        for case in chosen:
            expected = case.oracle()
            rows = {}
            for name in impls:
                bar.set_postfix_str(f"{case.name} / {name}")
                rows[name] = _measure(case, impl_objs[name], name, expected, budget, min_calls)
                bar.update()
            for name, r in rows.items():
                if r["status"] != "ok":
                    continue
                r["gflops"] = case.flops / r["seconds"] / 1e9 if case.flops else None
                r["gbps"] = case.nbytes / r["seconds"] / 1e9
                for base in ("numpy", "torch"):
                    b = rows.get(base)
                    ok = b is not None and b["status"] == "ok" and name != base
                    r[f"speedup_vs_{base}"] = b["seconds"] / r["seconds"] if ok else None
            results.extend(rows.values())
        # measured before and after the cases (the best of both), so a busy moment does not define the peak
        bar.set_postfix_str("FMA peak, again")
        peaks.append(fma_peak(threads, fma_seconds))
        bar.update()
    peak = {**peaks[0], "gflops": max(p["gflops"] for p in peaks),
            "gflops_1thread": max(p["gflops_1thread"] for p in peaks),
            "gflops_before_after": [p["gflops"] for p in peaks]}
    for r in results:
        if r["status"] == "ok":
            r["pct_of_fma_peak"] = 100.0 * r["gflops"] / peak["gflops"] if r["gflops"] else None
    machine = machine_facts()
    return {"quick": quick, "fma_peak": peak, "blas_kernels": blas_kernels(machine["blas"]), "machine": machine,
            "results": results}


def _measure(case, impl, name, expected, budget, min_calls):
    row = {"case": case.name, "shape": case.shape, "backend": name, "dtype": "float32"}
    if case.check_shape is not None:
        row["checked_at"] = case.check_shape  # max_abs_err is measured there, not at ``shape``
    if isinstance(impl, Unavailable):
        return {**row, "status": "skipped", "reason": str(impl)}
    if name in case.not_timed:
        return {**row, "status": "skipped", "reason": case.not_timed[name]}
    try:
        impl.require_op(case.op)
    except Unavailable as exc:
        return {**row, "status": "skipped", "reason": str(exc)}
    try:
        with impl.context():
            if case.check_shape is not None:
                row["max_abs_err"] = max_abs_err(impl.to_numpy(case.build_check(impl)()), expected)
            fn = case.build(impl)
            if case.check_shape is None:
                row["max_abs_err"] = max_abs_err(impl.to_numpy(fn()), expected)
            row["seconds"] = time_call(fn, impl.sync, budget, min_calls)
        row["status"] = "ok"
    except Exception as exc:  # one broken case must not hide the others; run() reports it
        row.update(status="error", reason=f"{type(exc).__name__}: {exc}")
    return row


# ---------------------------------------------------------------------------------------------
# the table


def _fmt_time(s):
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} us"


def _fmt(v, spec, suffix=""):
    return "-" if v is None else f"{v:{spec}}{suffix}"


def backends_absent(report):
    """{backend: reason} for implementations skipped in every case for one reason (e.g. no CuPy)."""
    by = {}
    for r in report["results"]:
        by.setdefault(r["backend"], set()).add(r.get("reason") if r["status"] == "skipped" else None)
    return {name: next(iter(reasons)) for name, reasons in by.items() if len(reasons) == 1 and None not in reasons}


def header_lines(report):
    """The lines above the table: versions, machine, the BLAS that ran, allocator, the FMA peak."""
    m, p = report["machine"], report["fma_peak"]
    alloc = m["allocator"]
    forced = f" (OPENBLAS_CORETYPE={m['env']['OPENBLAS_CORETYPE']})" if "OPENBLAS_CORETYPE" in m.get("env", {}) else ""
    return [
        f"qkv {m['qkv']}  Python {m['python']}  NumPy {m['numpy']}  SciPy {m['scipy']}  "
        f"torch {m['torch']['version'] if m['torch'] else 'not installed'}  {m['date_utc']} UTC",
        f"machine {m.get('cpu_model', m['machine'])}, {m['threads']} threads, qkv SIMD {m['simd']['in_use']} "
        f"(CPU supports {m['simd']['cpu_supports']})",
        "BLAS that ran" + forced + ": " + "; ".join(f"{k} {v}" for k, v in report["blas_kernels"].items()),
        f"allocator: {alloc['libc']}, MALLOC_TRIM_THRESHOLD_={alloc['MALLOC_TRIM_THRESHOLD_']}, "
        f"MALLOC_MMAP_THRESHOLD_={alloc['MALLOC_MMAP_THRESHOLD_']}",
        f"FMA peak measured now ({p['simd']} FMA chains, the level qkv runs): {p['gflops']:.0f} GFLOP/s on "
        f"{p['threads']} threads, {p['gflops_1thread']:.0f} on 1 (before/after the cases: "
        + "/".join(f"{g:.0f}" for g in p["gflops_before_after"]) + ")",
    ]


def format_table(report):
    lines = header_lines(report) + [""]
    head = (f"{'case':<20} {'shape':<26} {'backend':<7} {'time':>9} {'GFLOP/s':>8} {'GB/s':>7} {'% FMA':>6} "
            f"{'vs NumPy':>9} {'vs torch':>9} {'max err':>8}")
    lines.append(head)
    lines.append("-" * len(head))
    absent = backends_absent(report)
    for r in report["results"]:
        if r["backend"] in absent:
            continue
        if r["status"] != "ok":
            lines.append(f"{r['case']:<20} {r['shape']:<26} {r['backend']:<7} {r['status']}: {r['reason'][:70]}")
            continue
        lines.append(
            f"{r['case']:<20} {r['shape']:<26} {r['backend']:<7} {_fmt_time(r['seconds']):>9} "
            f"{_fmt(r['gflops'], '.1f'):>8} {_fmt(r['gbps'], '.1f'):>7} {_fmt(r['pct_of_fma_peak'], '.0f', '%'):>6} "
            f"{_fmt(r['speedup_vs_numpy'], '.2f', 'x'):>9} {_fmt(r['speedup_vs_torch'], '.2f', 'x'):>9} "
            f"{r['max_abs_err']:>8.1e}"
        )
    for name, reason in absent.items():
        lines.append(f"{name}: not measured ({reason})")
    p = report["fma_peak"]
    if any((r.get("pct_of_fma_peak") or 0) > 100 for r in report["results"]):
        lines.append(f"warning: rows above 100% of the FMA peak: the peak was measured while other work shared the "
                     f"cores (re-run on a quiet machine), or that row runs a wider SIMD level than qkv's {p['simd']} "
                     "(QKV_SIMD caps qkv, not torch or the BLAS)")
    lines.append("")
    lines.append(f"GFLOP/s: GEMM 2*M*K*N, attention 4*B*H*Lq*Lk*D (halved for causal); backward (_bwd): linear "
                 f"2 GEMMs, attention 2.5x the forward, torch timing y.backward(dy) alone; % FMA: of the "
                 f"{p['threads']}-thread FMA peak above. sgemm: the BLAS reference (numpy: NumPy's matmul; cpu: "
                 "qkv.linear, SciPy's BLAS). vs X: X's time / this time.")
    checked = {r["case"]: r["checked_at"] for r in report["results"] if r.get("checked_at")}
    for case, where in checked.items():
        lines.append(f"{case}: max err against the oracle at {where} (the reference is too slow at the timed size)")
    return "\n".join(lines)
