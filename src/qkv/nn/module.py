"""A minimal module base: parameters are array attributes, submodules are Module attributes (or
lists of them). It gives named parameters (HF-style dotted names), counting, and device moves.

Scratch holds the work buffers of one forward pass (or of a whole generation): every block of a
model has the same shapes, so one set of buffers serves all layers, and a decode step reuses the
previous step's. Fresh allocations in a hot loop cost page faults, not just malloc.

Tape is what a training forward saves for its backward: each layer writes its activations into
work buffers of one Scratch under its own dotted name (the same names as its parameters), so the
buffers of one step are reused by the next, and its backward writes its parameters' gradients
into buffers of the same Scratch under the same names. The backward's intermediate gradients
live only until the next layer down has read them, so blocks share them (two sets, by the
block's parity: block i reads block i + 1's output gradient while it writes its own). After the
first step a training step allocates no large array.
"""

import numpy as np

from qkv import _backend


class Module:
    """Base class of qkv.nn layers and models. Subclasses assign arrays and submodules in __init__."""

    def _children(self):
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(isinstance(m, Module) for m in value):
                for i, m in enumerate(value):
                    yield f"{name}.{i}", m

    def named_parameters(self, prefix=""):
        """(dotted name, array) for every parameter, recursively."""
        for name, value in vars(self).items():
            if name.startswith("_") or value is None:
                continue
            if _backend.array_kind(value) is not None:
                yield prefix + name, value
        for name, child in self._children():
            yield from child.named_parameters(prefix + name + ".")

    def num_parameters(self):
        return int(sum(p.size for _, p in self.named_parameters()))

    def _map_arrays(self, fn):
        for name, value in list(vars(self).items()):
            if not name.startswith("_") and value is not None and _backend.array_kind(value) is not None:
                setattr(self, name, fn(value))
        for _, child in self._children():
            child._map_arrays(fn)

    def to(self, device):
        """Move every parameter to ``"cpu"`` (NumPy) or ``"cuda"`` (CuPy); returns self.

        Raises qkv.BackendUnavailable (with the reason) when the CUDA backend cannot run here.
        """
        if device == "cuda":
            _backend._module("cuda")  # raises BackendUnavailable with the reason
            import cupy

            self._map_arrays(cupy.asarray)
        elif device == "cpu":
            self._map_arrays(lambda a: a.get() if _backend.array_kind(a) == "cupy" else np.asarray(a))
        else:
            raise ValueError(f"to: device must be 'cpu' or 'cuda', got {device!r}")
        self._on_move()
        return self

    def _on_move(self):
        """Hook: rebuild derived views after parameters moved."""
        for _, child in self._children():
            child._on_move()

    @property
    def device(self):
        for _, p in self.named_parameters():
            return "cuda" if _backend.array_kind(p) == "cupy" else "cpu"
        return "cpu"

    def xp(self):
        """The array module of this model's parameters (numpy or cupy)."""
        if self.device == "cuda":
            import cupy

            return cupy
        return np

    def quantize(self, format):
        """Store the weights in low precision, in place; returns self. format: "bf16" or "int8"
        (llama.cpp's Q8_0 blocks of 32 with a float16 scale). Every Linear weight and a GPT's tied
        LM head become qkv.QuantizedWeight; activations, layer norms, biases and the KV cache stay
        float32. Inference only (CPU): training and the per-head weight views need float weights."""
        from qkv.quant import quantize_model

        return quantize_model(self, format)

    def save_pretrained(self, folder):
        """Write the model to a folder (config.json, model.safetensors, tokenizer.json) that
        ``from_pretrained`` reads back; quantized weights stay quantized (qkv.quant.save_pretrained)."""
        from qkv.quant import save_pretrained

        return save_pretrained(self, folder)


class Scratch:
    """Named work buffers, allocated on first use and reused while the shape stays the same.

    Not shared between threads: each forward call (or each generate call) makes its own.
    """

    def __init__(self, xp, dtype):
        self.xp, self.dtype = xp, dtype
        self._bufs = {}

    def __call__(self, name, shape):
        b = self._bufs.get(name)
        if b is not None and b.shape == shape:  # shape: a tuple of ints (the common case)
            return b
        shape = tuple(int(n) for n in shape)
        if b is None or b.shape != shape:
            b = self._bufs[name] = self.xp.empty(shape, dtype=self.dtype)
        return b


class Tape:
    """What a training forward keeps for the backward, for one layer (and, through child(), its
    sublayers).

    ``tape.buf(name, shape)`` is a work buffer of the shared Scratch named ``prefix + name``:
    distinct per layer, reused from one step to the next. ``tape[key] = array`` keeps a reference
    (an input, a buffer, a small statistic) for the layer's backward. ``tape.work(name, shape)`` is
    a backward intermediate, named by the work prefix, which ``child(name, work=...)`` lets layers
    of the same shapes share. ``tape.grad(name, param)`` is the buffer that receives the gradient
    of the parameter ``prefix + name`` (param's shape), recorded in the dict shared by the tree.
    """

    def __init__(self, scratch, prefix="", grads=None, work=None):
        self.scratch, self.prefix = scratch, prefix
        self.wprefix = prefix if work is None else work
        self.grads = {} if grads is None else grads
        self.saved = {}
        self._kids = {}

    def child(self, name, work=None):
        """The tape of sublayer ``name``; ``work``: the name its backward intermediates go under
        (default ``name``; blocks pass their parity)."""
        kid = self._kids.get(name)
        if kid is None:
            w = f"{self.wprefix}{name if work is None else work}."
            kid = self._kids[name] = Tape(self.scratch, f"{self.prefix}{name}.", self.grads, w)
        return kid

    def buf(self, name, shape):
        return self.scratch(self.prefix + name, shape)

    def work(self, name, shape):
        return self.scratch("d:" + self.wprefix + name, shape)

    def grad(self, name, param):
        """The gradient buffer of parameter ``prefix + name`` (param's shape), recorded in grads."""
        g = self.grads[self.prefix + name] = self.scratch("grad:" + self.prefix + name, param.shape)
        return g

    def __setitem__(self, key, value):
        self.saved[key] = value

    def __getitem__(self, key):
        try:
            return self.saved[key]
        except KeyError:
            raise RuntimeError(f"backward of {self.prefix or 'the model'} before its forward (no {key!r} "
                               "saved)") from None

    def get(self, key, default=None):
        return self.saved.get(key, default)


def buffer(scratch, name, shape):
    """scratch(name, shape), or None (let the op allocate) when there is no scratch."""
    return None if scratch is None else scratch(name, shape)


def namespace(a):
    """numpy or cupy, whichever holds ``a``."""
    if _backend.array_kind(a) == "cupy":
        import cupy

        return cupy
    return np
