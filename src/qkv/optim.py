"""Optimisation for training: AdamW, global-norm gradient clipping, and a cosine learning-rate
schedule with linear warm-up (what nanoGPT's train.py uses).

AdamW groups the parameters as nanoGPT does: every parameter with 2 or more dimensions (weight
matrices, embeddings) is decayed, biases and layer-norm gains are not. Each step runs one fused
update kernel per parameter (csrc/optim.c on the cpu backend, src/qkv/_cuda/optim.cu on CuPy
arrays, the float64 reference in qkv._reference on the numpy backend), updating the parameter and
its two moments in place. The moments have the parameter's dtype, except float32 moments for
float16/bfloat16 parameters.
"""

import math
import numbers

import numpy as np

from qkv import _backend


def _params_dict(params):
    """A dict {name: array} from a dict or an iterable of (name, array) (model.named_parameters())."""
    items = params.items() if isinstance(params, dict) else params
    out = {}
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError("params must be a dict {name: array} or (name, array) pairs, e.g. "
                            "model.named_parameters()")
        name, p = item
        if _backend.array_kind(p) is None:
            raise TypeError(f"params[{name!r}] must be a NumPy or CuPy array, got {type(p).__name__}")
        if p.dtype.kind != "f":
            raise TypeError(f"params[{name!r}] must be floating point, got {p.dtype}")
        if not p.flags.c_contiguous or not p.flags.writeable:
            raise ValueError(f"params[{name!r}] must be C-contiguous and writeable (it is updated in place)")
        out[name] = p
    if not out:
        raise ValueError("params is empty")
    return out


def _real(name, value, low=None, high=None, low_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)) or high is not None and value >= high:
        rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must lie in {rng}, got {value!r}")
    return value


class AdamW:
    """AdamW over a model's parameters, updated in place.

    params: ``model.named_parameters()`` or a dict {name: array}; the arrays are the model's own.
    lr, betas, eps, weight_decay: as torch.optim.AdamW (defaults: nanoGPT's betas (0.9, 0.99)
    for small models, weight decay 0.1). Weight decay applies to parameters of 2+ dimensions only.

    ``step(grads, lr=None)`` takes a dict with the same names (model.value_and_grad's); ``lr``
    overrides the learning rate for this step (a schedule). ``state_dict()`` / ``load_state_dict()``
    save and restore the step count, the hyperparameters and both moments.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1):
        self.params = _params_dict(params)
        self.lr = _real("lr", lr, 0.0)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_real("betas[0]", betas[0], 0.0, 1.0), _real("betas[1]", betas[1], 0.0, 1.0))
        self.eps = _real("eps", eps, 0.0, low_open=True)
        self.weight_decay = _real("weight_decay", weight_decay, 0.0)
        kinds = {_backend.array_kind(p) for p in self.params.values()}
        if len(kinds) > 1:
            raise TypeError("params mix NumPy and CuPy arrays; move the model to one device first")
        self.t = 0  # steps taken
        self.m = {n: _zeros_like(p) for n, p in self.params.items()}
        self.v = {n: _zeros_like(p) for n, p in self.params.items()}
        # flat (n,) views of each parameter and its moments, made once: the kernel's operands
        self._flat = {n: (p.reshape(-1), self.m[n].reshape(-1), self.v[n].reshape(-1)) for n, p in self.params.items()}

    def decays(self, name):
        """Whether weight decay applies to this parameter (2+ dimensions, as nanoGPT groups them)."""
        return self.params[name].ndim >= 2

    def step(self, grads, lr=None):
        """One AdamW update of every parameter from ``grads`` {name: array of its shape}."""
        lr = self.lr if lr is None else _real("lr", lr, 0.0)
        if not isinstance(grads, dict) or set(grads) != set(self.params):
            have = set(grads) if isinstance(grads, dict) else set()
            missing, extra = sorted(set(self.params) - have), sorted(have - set(self.params))
            raise ValueError(f"AdamW.step: grads must have exactly the parameters' names (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
        for name, p in self.params.items():
            g = grads[name]
            if _backend.array_kind(g) != _backend.array_kind(p) or g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"AdamW.step: grads[{name!r}] is {g.dtype} {tuple(g.shape)} on "
                                 f"{_backend.array_kind(g)}; the parameter is {p.dtype} {tuple(p.shape)} on "
                                 f"{_backend.array_kind(p)}")
        self.t += 1
        b1, b2 = self.betas
        step_size = lr / (1.0 - b1 ** self.t)
        bc2_sqrt = math.sqrt(1.0 - b2 ** self.t)
        update = _updater(next(iter(self.params.values())))
        for name, (p, m, v) in self._flat.items():
            decay = 1.0 - lr * self.weight_decay if self.params[name].ndim >= 2 else 1.0
            update(p, grads[name].reshape(-1), m, v, b1, b2, self.eps, step_size, bc2_sqrt, decay)

    def state_dict(self):
        """{"step", "lr", "betas", "eps", "weight_decay", "m": {name: array}, "v": {name: array}}
        (the moments are this optimizer's arrays, not copies)."""
        return {"step": self.t, "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state):
        """Restore what state_dict returned (moments copied into this optimizer's buffers)."""
        try:
            t, m, v = state["step"], state["m"], state["v"]
        except (KeyError, TypeError):
            raise ValueError("AdamW.load_state_dict: need a dict with 'step', 'm' and 'v'") from None
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
            raise ValueError(f"AdamW.load_state_dict: step must be an int >= 0, got {t!r}")
        for key, moments in (("m", m), ("v", v)):
            if set(moments) != set(self.params):
                raise ValueError(f"AdamW.load_state_dict: {key} names do not match the parameters")
            for name, a in moments.items():
                if tuple(a.shape) != tuple(self.params[name].shape):
                    raise ValueError(f"AdamW.load_state_dict: {key}[{name!r}] has shape {tuple(a.shape)}; the "
                                     f"parameter has {tuple(self.params[name].shape)}")
        for key, moments in (("m", m), ("v", v)):
            for name, a in moments.items():
                dst = getattr(self, key)[name]
                dst[...] = _to_like(a, dst)
        self.t = int(t)
        if "lr" in state:
            self.lr = _real("lr", state["lr"], 0.0)
        if "betas" in state:
            self.betas = tuple(_real("betas", b, 0.0, 1.0) for b in state["betas"])
        if "eps" in state:
            self.eps = _real("eps", state["eps"], 0.0, low_open=True)
        if "weight_decay" in state:
            self.weight_decay = _real("weight_decay", state["weight_decay"], 0.0)


def _zeros_like(p):
    """A zero moment for p: p's dtype, float32 for 16-bit parameters."""
    return _namespace(p).zeros(p.shape, dtype=p.dtype if p.dtype.itemsize >= 4 else np.float32)


def _namespace(a):
    if _backend.array_kind(a) == "cupy":
        import cupy

        return cupy
    return np


def _to_like(a, dst):
    """a (NumPy or CuPy) as an array on dst's device with dst's dtype."""
    if _backend.array_kind(dst) == "cupy":
        import cupy

        return cupy.asarray(a, dtype=dst.dtype)
    a = a.get() if _backend.array_kind(a) == "cupy" else np.asarray(a)
    return a.astype(dst.dtype, copy=False)


def _updater(p):
    """update(p, g, m, v, beta1, beta2, eps, step_size, bc2_sqrt, decay) on flat (n,) arrays, for
    the backend in force for arrays like p: the fused C kernel (cpu, float32/float64), else the
    float64 reference (the numpy backend, CuPy arrays, float16)."""
    be = _backend.select("adamw", {"param": p})
    if be.NAME == "cpu" and p.dtype in (np.float32, np.float64):
        from qkv._cpu import _config
        from qkv._cpu._optim import adamw_update

        simd, threads = _config.simd_level(), _config.get_num_threads()

        def update(p, g, m, v, b1, b2, eps, step_size, bc2_sqrt, decay):
            adamw_update(p, np.ascontiguousarray(g), m, v, b1, b2, eps, step_size, bc2_sqrt, decay, simd, threads)

        return update
    if be.NAME == "cuda":
        return _cuda_updater(p.dtype)
    from qkv import _reference

    return _reference.adamw


def _cuda_updater(dtype):
    """update(...) through the adamw kernel of src/qkv/_cuda/optim.cu (fp32 moments and math)."""
    from qkv import _cuda
    from qkv._cuda import kernels

    rt = _cuda._runtime()
    name = kernels.expr("adamw", _cuda._dtype_name(dtype))

    def update(p, g, m, v, b1, b2, eps, step_size, bc2_sqrt, decay):
        n = p.size
        blocks = max(1, min(math.ceil(n / 256), 1 << 16))  # a grid-stride loop covers the rest
        rt.launch("optim", name, (blocks,), (256,),
                  (p, rt.xp.ascontiguousarray(g), m, v, np.int64(n), np.float32(b1), np.float32(b2), np.float32(eps),
                   np.float32(step_size), np.float32(bc2_sqrt), np.float32(decay)))

    return update


def clip_grad_norm(grads, max_norm):
    """Scale every gradient in place so that their global L2 norm is at most ``max_norm``.

    The norm is sqrt(sum of every squared element), accumulated in float64; when it exceeds
    max_norm every gradient is multiplied by max_norm / (norm + 1e-6), as torch's
    clip_grad_norm_. Returns the norm before clipping (a float; NaN/inf if a gradient holds one,
    and then nothing is scaled).
    """
    max_norm = _real("max_norm", max_norm, 0.0, low_open=True)
    if not isinstance(grads, dict) or not grads:
        raise ValueError("clip_grad_norm: grads must be a non-empty dict {name: array}")
    total = 0.0
    sumsq = _sumsq(next(iter(grads.values())))
    for g in grads.values():
        total += sumsq(g)
    norm = math.sqrt(total) if math.isfinite(total) else float("nan") if total != total else float("inf")
    if math.isfinite(norm) and norm > max_norm:
        coef = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= g.dtype.type(coef)
    return norm


def _sumsq(g):
    """sumsq(g): the sum of g's squared elements in float64, for the backend of arrays like g: one
    pass of csrc/optim.c on the cpu backend (no float64 copy), else through a float64 copy."""
    be = _backend.select("clip_grad_norm", {"grad": g})
    if be.NAME == "cpu" and g.dtype in (np.float32, np.float64):
        from qkv._cpu import _config
        from qkv._cpu._optim import sumsq

        threads = _config.get_num_threads()
        return lambda g: sumsq(np.ascontiguousarray(g).reshape(-1), threads)

    def sumsq_copy(g):
        g64 = g.astype(np.float64) if g.dtype != np.float64 else g
        return float((g64 * g64).sum())

    return sumsq_copy


def cosine_lr(step, max_lr, warmup, max_steps, min_lr=0.0):
    """nanoGPT's learning-rate schedule at ``step`` (0-based): linear warm-up from max_lr /
    (warmup + 1) to max_lr over ``warmup`` steps, then a cosine from max_lr down to min_lr at
    ``max_steps``, then min_lr."""
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step >= max_steps:
        return min_lr
    ratio = (step - warmup) / max(max_steps - warmup, 1)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)
