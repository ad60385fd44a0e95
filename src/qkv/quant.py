"""Low-precision weights: qkv.QuantizedWeight, quantize_weight, and what qkv.linear, the models and
their folders do with them.

Decode reads every weight once per token, so it runs at the speed of memory: fewer bytes per
weight is the only way further. Two formats:

- ``"bf16"``: bfloat16, the top 16 bits of the float32 (round to nearest even); 2 bytes a weight.
- ``"int8"``: llama.cpp's Q8_0 layout: blocks of 32 int8 values along the input axis with one
  **float16** scale per block (as llama.cpp stores it), ``w = scale * q``, ``scale = max|w| / 127``
  (rounded to float16), ``q = round(w / scale)``: 34 bytes per 32 weights.

Storage is always row-wise: a weight of shape (in, out) keeps ``data`` as (out, in) -- row n holds
output n's inputs, contiguous, like a PyTorch nn.Linear weight -- so the blocks run along the
reduction axis and one output is one contiguous stream (csrc/quant.c). int8 rows are zero padded
to a multiple of 32 inputs; ``scales`` is (out, in_padded / 32) float16.

``W.T`` is the same storage seen as (out, in); such a view gathers rows (``W.T[ids]``, dequantised
float32), which is what a tied embedding table needs: GPT's token embeddings (V, C) are stored as
``quantize_weight(wte.T).T``, so the LM head ``wte.T`` is a (C, V) linear weight and the lookup
``wte[ids]`` reads only the rows it needs.

Only the weights change: activations, layer norms, biases and the KV cache stay float32.
"""

import json
import struct
from pathlib import Path

import numpy as np

FORMATS = ("bf16", "int8")
BLOCK = 32  # int8: weights per scale
_CHUNK = 1 << 22  # weights converted at a time (bounds the float64 temporaries of quantize_weight)


class QuantizedWeight:
    """A 2-D weight in bfloat16 or 8-bit blocks (see the module docstring).

    format: ``"bf16"`` or ``"int8"``; shape: the logical shape; data: uint16 bfloat16 bit patterns
    (out, in) or int8 values (out, in_padded); scales: float16 (out, in_padded / 32) for int8, else
    None. ``axis`` is the logical axis the blocks run along: 0 for a linear weight (in, out), 1 for
    its transpose ``.T``. Make one with qkv.quantize_weight.
    """

    def __init__(self, format, shape, data, scales=None, axis=0):
        if format not in FORMATS:
            raise ValueError(f"QuantizedWeight: format must be one of {FORMATS}, got {format!r}")
        shape = tuple(int(n) for n in shape)
        if len(shape) != 2 or axis not in (0, 1):
            raise ValueError(f"QuantizedWeight: shape must be 2-D and axis 0 or 1, got {shape}, axis {axis!r}")
        K, N = shape if axis == 0 else shape[::-1]  # K along the blocks (rows of data hold K)
        Kp = K if format == "bf16" else -(-K // BLOCK) * BLOCK
        want = np.dtype(np.uint16) if format == "bf16" else np.dtype(np.int8)
        if not isinstance(data, np.ndarray) or data.dtype != want or data.shape != (N, Kp):
            raise TypeError(f"QuantizedWeight: data must be a NumPy {want} array of shape {(N, Kp)} for format "
                            f"{format!r} and shape {shape}, got {getattr(data, 'dtype', type(data).__name__)} "
                            f"{getattr(data, 'shape', '')}")
        if format == "int8":
            if not isinstance(scales, np.ndarray) or scales.dtype != np.float16 or scales.shape != (N, Kp // BLOCK):
                raise TypeError(f"QuantizedWeight: int8 scales must be a float16 array of shape {(N, Kp // BLOCK)}, "
                                f"got {getattr(scales, 'dtype', type(scales).__name__)} {getattr(scales, 'shape', '')}")
        elif scales is not None:
            raise TypeError("QuantizedWeight: bf16 has no scales (pass scales=None)")
        self.format, self.shape, self.axis = format, shape, axis
        self.data = np.ascontiguousarray(data)
        self.scales = None if scales is None else np.ascontiguousarray(scales)

    # the array-like bits the models use: shape, ndim, dtype (of what it computes in), .T
    ndim = 2
    dtype = np.dtype(np.float32)

    @property
    def T(self):
        return QuantizedWeight(self.format, self.shape[::-1], self.data, self.scales, 1 - self.axis)

    @property
    def size(self):
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self):
        return self.data.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def __repr__(self):
        return f"QuantizedWeight(format={self.format!r}, shape={self.shape}, axis={self.axis}, {self.nbytes} bytes)"

    def _rows(self, rows, dtype):
        """Stored rows (R, K) (data[rows]) dequantised to dtype."""
        K = self.shape[self.axis]
        if self.format == "bf16":
            out = (self.data[rows].astype(np.uint32) << 16).view(np.float32)
        else:
            q = self.data[rows].astype(np.float32)
            q = q.reshape(q.shape[:-1] + (-1, BLOCK)) * self.scales[rows].astype(np.float32)[..., None]
            out = q.reshape(q.shape[:-2] + (-1,))[..., :K]
        return out.astype(dtype, copy=False)

    def dequantize(self, dtype=np.float32):
        """The weight as a dense array of its logical shape (exact: every value fits a float32)."""
        rows = self._rows(slice(None), dtype)  # (N, K)
        return np.ascontiguousarray(rows.T if self.axis == 0 else rows)

    def __getitem__(self, ids):
        """Row gather of a transposed view (an embedding table): ``W.T[ids]`` -> float32 ids.shape + (K,)."""
        if self.axis != 1:
            raise TypeError("QuantizedWeight: only a (rows, features) view (W.T) can be indexed by row ids; "
                            "use dequantize() for the dense array")
        return self._rows(np.asarray(ids), np.float32)


def _to_bf16(w):
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(w)
    if nan.any():
        r[nan] = ((u[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return r


def _to_q8(rows, Kp):
    """rows (R, K) float -> (q (R, Kp) int8, scales (R, Kp / 32) float16), Q8_0."""
    R, K = rows.shape
    w = np.zeros((R, Kp), np.float64)
    w[:, :K] = rows
    blocks = w.reshape(R, -1, BLOCK)
    d = (np.abs(blocks).max(axis=-1) / 127.0).astype(np.float16)  # the scale as stored
    d64 = d.astype(np.float64)
    inv = np.divide(1.0, d64, out=np.zeros_like(d64), where=d64 > 0)
    q = np.clip(np.rint(blocks * inv[..., None]), -127, 127).astype(np.int8)
    return q.reshape(R, Kp), d


def quantize_weight(weight, format):
    """A (in, out) float weight -> QuantizedWeight in ``format`` ("bf16" or "int8"); blocks along in.

    ``quantize_weight(W.T, fmt).T`` quantizes a (rows, features) table along its features instead.
    """
    if format not in FORMATS:
        raise ValueError(f"quantize_weight: format must be one of {FORMATS}, got {format!r}")
    if isinstance(weight, QuantizedWeight):
        raise TypeError(f"quantize_weight: weight is already quantized ({weight.format})")
    if type(weight).__module__.split(".")[0] != "numpy":
        raise TypeError(f"quantize_weight: weight must be a NumPy array (quantized weights live on the CPU), "
                        f"got {type(weight).__name__}")
    if weight.ndim != 2 or weight.dtype.kind != "f" or weight.size == 0:
        raise ValueError(f"quantize_weight: weight must be a non-empty 2-D float array (in, out), got "
                         f"{weight.dtype} of shape {weight.shape}")
    if format == "int8" and not np.isfinite(weight).all():
        raise ValueError("quantize_weight: int8 needs finite weights (a NaN or Inf has no 8-bit value)")
    K, N = weight.shape
    Kp = K if format == "bf16" else -(-K // BLOCK) * BLOCK
    data = np.empty((N, Kp), np.uint16 if format == "bf16" else np.int8)
    scales = None if format == "bf16" else np.empty((N, Kp // BLOCK), np.float16)
    step = max(1, _CHUNK // K)
    for n0 in range(0, N, step):  # a few output rows at a time: bounded temporaries
        rows = weight[:, n0:n0 + step].T  # (R, K)
        if format == "bf16":
            data[n0:n0 + step] = _to_bf16(rows)
        else:
            data[n0:n0 + step], scales[n0:n0 + step] = _to_q8(rows, Kp)
    return QuantizedWeight(format, (K, N), data, scales)


# ---------------------------------------------------------------------------------------------
# qkv.linear with a QuantizedWeight (arguments validated by qkv._ops.linear)

_cpu = None  # (simd_level, get_num_threads, ACTIVATION_CODES, qlinear_bf16_rows, qlinear_q8_rows), at first use


def linear_cpu(x, weight, bias, activation, out):
    """The ``cpu`` backend: csrc/quant.c through qkv._cpu._quant. A decode step calls this about 50
    times per token, so the compiled entry points are looked up once, not imported per call."""
    global _cpu
    if _cpu is None:
        from qkv._cpu import ACTIVATION_CODES, _config
        from qkv._cpu._quant import qlinear_bf16_rows, qlinear_q8_rows

        _cpu = (_config.simd_level, _config.get_num_threads, ACTIVATION_CODES, qlinear_bf16_rows, qlinear_q8_rows)
    simd_level, num_threads, codes, bf16_rows, q8_rows = _cpu
    K, N = weight.shape
    y = np.empty(x.shape[:-1] + (N,), np.float32) if out is None else out
    x2 = x.reshape(1, K) if x.ndim == 1 and x.flags.c_contiguous else np.ascontiguousarray(x).reshape(-1, K)
    b = None if bias is None else np.ascontiguousarray(bias)
    if weight.format == "bf16":
        bf16_rows(y.reshape(-1, N), x2, weight.data, b, codes[activation], simd_level(), num_threads())
    else:
        q8_rows(y.reshape(-1, N), x2, weight.data, weight.scales.view(np.uint16), b, codes[activation], simd_level(),
                num_threads())
    return y


def kernel_info():
    """{SIMD level name: what the quantized linear runs there} (qkv info)."""
    from qkv._cpu._quant import KERNELS

    return dict(KERNELS)


# ---------------------------------------------------------------------------------------------
# models: quantize in place; save and load folders with quantized weights

def quantize_model(model, format):
    """Store every Linear weight of ``model`` (and a GPT's tied LM head) in ``format``; in place."""
    from qkv.nn.gpt import GPT
    from qkv.nn.layers import Linear

    if format not in FORMATS:
        raise ValueError(f"quantize: format must be one of {FORMATS}, got {format!r}")
    if model.device != "cpu":
        raise TypeError("quantize: quantized weights run on the cpu backend; move the model with .to('cpu') first")

    def visit(m):
        if isinstance(m, Linear) and not isinstance(m.weight, QuantizedWeight):
            m.weight = quantize_weight(m.weight, format)
        for _, child in m._children():
            visit(child)

    visit(model)
    if isinstance(model, GPT) and not isinstance(model.embeddings.wte, QuantizedWeight):
        # tied LM head: (V, C) table stored as rows of C; wte.T is the (C, V) head, wte[ids] the lookup
        model.embeddings.wte = quantize_weight(model.embeddings.wte.T, format).T
    return model


def quantized_weights(model, prefix=""):
    """(dotted name, QuantizedWeight) for every quantized weight of a model, recursively."""
    for name, value in vars(model).items():
        if not name.startswith("_") and isinstance(value, QuantizedWeight):
            yield prefix + name, value
    for name, child in model._children():
        yield from quantized_weights(child, prefix + name + ".")


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I8": np.int8}
_ST_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8"}
METADATA_KEY = "qkv.quantization"  # safetensors metadata: {name: {"format", "shape", "axis"}} as JSON


def _write_safetensors(path, tensors, metadata):
    """tensors: {name: (safetensors dtype, array)}; the format is an 8-byte little-endian header
    length, a JSON header ({name: dtype, shape, data_offsets}, "__metadata__"), then the bytes."""
    header, offset = {"__metadata__": metadata}, 0
    for name, (dt, a) in tensors.items():
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, a in tensors.values():
            f.write(np.ascontiguousarray(a).tobytes())


def _read_safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n > 100 << 20:
            raise ValueError(f"{path}: safetensors header of {n} bytes is not plausible")
        return json.loads(f.read(n)), 8 + n


def quantization_of(folder):
    """The quantized weights recorded in a folder's model.safetensors by save_pretrained ({name: info},
    empty for a float32 model), or None for a folder save_pretrained did not write (Hugging Face's)."""
    p = Path(folder) / "model.safetensors"
    if not p.is_file():
        return None
    try:
        header, _ = _read_safetensors_header(p)
    except (OSError, ValueError, struct.error):
        return None
    meta = header.get("__metadata__") or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else None


def save_pretrained(model, folder):
    """Write config.json, model.safetensors (qkv's parameter names; float32 tensors as F32, bf16
    weights natively as BF16, int8 weights as I8 values plus ``NAME.scales`` F16) and the tokenizer."""
    from qkv.nn.encoder import Encoder
    from qkv.nn.gpt import GPT

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, GPT):
        c = model.config
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu"}[c.activation]
        cfg = {"model_type": "gpt2", "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_layer": c.n_layer,
               "n_head": c.n_head, "n_embd": c.n_embd, "n_inner": c.n_inner, "layer_norm_epsilon": c.layer_norm_epsilon,
               "activation_function": act}
        eos = model.eos_token_id
        if eos is not None:
            cfg["eos_token_id"] = eos
    elif isinstance(model, Encoder):
        c = model.config
        act = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}[c.activation]
        cfg = {"model_type": "bert", "vocab_size": c.vocab_size, "max_position_embeddings": c.max_position_embeddings,
               "type_vocab_size": c.type_vocab_size, "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
               "hidden_size": c.n_embd, "intermediate_size": c.n_inner, "layer_norm_eps": c.layer_norm_epsilon,
               "hidden_act": act, "pad_token_id": c.pad_token_id}
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": model.max_seq_length}))
    else:
        raise TypeError(f"save_pretrained: a GPT or an Encoder, got {type(model).__name__}")
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    tensors, info = {}, {}
    for name, p in model.named_parameters():
        a = np.asarray(p)
        tensors[name] = (_ST_NAMES.get(a.dtype, "F32"), a if a.dtype in _ST_NAMES else a.astype(np.float32))
    for name, w in quantized_weights(model):
        info[name] = {"format": w.format, "shape": list(w.shape), "axis": w.axis}
        tensors[name] = ("BF16" if w.format == "bf16" else "I8", w.data)
        if w.scales is not None:
            tensors[name + ".scales"] = ("F16", w.scales)
    _write_safetensors(folder / "model.safetensors", tensors, {"format": "np", METADATA_KEY: json.dumps(info)})
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def load_quantized(cls, folder, config):
    """A model saved by save_pretrained (qkv's parameter names). The quantized tensors are memory
    mapped as stored (never widened to float32); the float32 ones are read into arrays."""
    from qkv.io.checkpoint import _ShapesOnly, _resolve

    folder = Path(folder)
    path = folder / "model.safetensors"
    header, start = _read_safetensors_header(path)
    info = json.loads(header["__metadata__"][METADATA_KEY])
    raw = np.memmap(path, dtype=np.uint8, mode="r")

    def tensor(name):
        if name not in header:
            raise ValueError(f"{path} is missing tensor {name!r}")
        h = header[name]
        if h.get("dtype") not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {h.get('dtype')!r}")
        b, e = h["data_offsets"]
        dt = np.dtype(_ST_DTYPES[h["dtype"]])
        shape = tuple(int(n) for n in h["shape"])
        if e - b != int(np.prod(shape)) * dt.itemsize or start + e > raw.size:
            raise ValueError(f"{path}: tensor {name!r} has inconsistent offsets")
        return raw[start + b:start + e].view(dt).reshape(shape)

    shapes = {name: p.shape for name, p in cls(config, xp=_ShapesOnly).named_parameters()}
    model = cls(config, xp=_ShapesOnly)  # placeholders only: every parameter is assigned below
    for name, shape in shapes.items():
        obj, attr = _resolve(model, name)
        if name in info:
            w = info[name]
            if tuple(w["shape"]) != tuple(shape):
                raise ValueError(f"{path}: {name} has shape {tuple(w['shape'])}; the config needs {tuple(shape)}")
            setattr(obj, attr, QuantizedWeight(w["format"], w["shape"], tensor(name),
                                               tensor(name + ".scales") if w["format"] == "int8" else None,
                                               w["axis"]))
        else:
            t = tensor(name)
            if t.shape != tuple(shape):
                raise ValueError(f"{path}: {name} has shape {t.shape}; the config needs {tuple(shape)}")
            setattr(obj, attr, np.array(t, dtype=np.float32))
    _attach_tokenizer(model, folder, config)
    return model


def _attach_tokenizer(model, folder, config):
    """What from_pretrained sets besides the weights: tokenizer, eos id (GPT), max_seq_length (Encoder)."""
    from qkv.io.checkpoint import _max_seq_length, _maybe_tokenizer, read_eos_token_id
    from qkv.nn.encoder import Encoder

    model.tokenizer = _maybe_tokenizer(folder)
    if isinstance(model, Encoder):
        model.max_seq_length = _max_seq_length(folder, config)
        if model.tokenizer is not None:
            model.tokenizer.enable_truncation(model.max_seq_length)
        return
    eos = read_eos_token_id(folder)
    eos = [e for e in ([eos] if isinstance(eos, int) else eos or []) if e < config.vocab_size]
    model.eos_token_id = None if not eos else eos[0] if len(eos) == 1 else eos
