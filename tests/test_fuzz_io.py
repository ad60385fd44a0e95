"""Hostile files: truncated, oversized-header, wrong-dtype and random safetensors files, and
malformed config.json, fed to the checkpoint reader. Every failure is a clear exception
(ValueError / FileNotFoundError); none crashes the interpreter or allocates what the file claims.

Every test here runs under an address-space cap (conftest.address_space_limit): an attempt to
allocate what a hostile file claims is a MemoryError that fails the test, never a dead machine."""

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qkv.io import read_safetensors
from qkv.nn import GPT

FIX = Path(__file__).parent / "fixtures" / "tiny_gpt2"
GOOD = (FIX / "model.safetensors").read_bytes()
CONFIG = json.loads((FIX / "config.json").read_text())
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _capped(memory_cap):
    yield


def load_bytes(tmp_path, data):
    p = tmp_path / "model.safetensors"
    p.write_bytes(data)
    try:
        read_safetensors(p)
    except ValueError:
        pass  # a clear refusal is the point


@SETTINGS
@given(cut=st.integers(0, len(GOOD) - 1))
def test_truncated_files(tmp_path, cut):
    with pytest.raises(ValueError):
        read_safetensors_bytes(tmp_path, GOOD[:cut])


def read_safetensors_bytes(tmp_path, data):
    p = tmp_path / "model.safetensors"
    p.write_bytes(data)
    return read_safetensors(p)


@SETTINGS
@given(n=st.integers(2**20, 2**64 - 1), tail=st.binary(max_size=64))
def test_oversized_header_length(tmp_path, n, tail):
    with pytest.raises(ValueError):
        read_safetensors_bytes(tmp_path, struct.pack("<Q", n) + tail)


@SETTINGS
@given(data=st.binary(max_size=256))
def test_random_bytes(tmp_path, data):
    load_bytes(tmp_path, data)


@SETTINGS
@given(flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=8))
def test_corrupted_header_bytes(tmp_path, flips):
    data = bytearray(GOOD)
    for pos, val in flips:
        data[pos % min(len(data), 2000)] = val
    load_bytes(tmp_path, bytes(data))


def _header(tensors):
    meta, offset, blobs = {}, 0, []
    for name, (dtype, shape, nbytes) in tensors.items():
        meta[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        blobs.append(b"\0" * nbytes)
    h = json.dumps(meta).encode()
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


@pytest.mark.parametrize("entry", [
    ("F32", [4, 4], 12),  # data shorter than the shape says
    ("F32", [2**40, 2**40], 16),  # shape far beyond the data
    ("XYZ", [2], 8),  # unknown dtype
    ("F32", [-1, 2], 8),  # negative dimension
])
def test_inconsistent_headers(tmp_path, entry):
    with pytest.raises(ValueError):
        read_safetensors_bytes(tmp_path, _header({"w": entry}))


def _folder_with(tmp_path, config=None, tensors=None):
    d = tmp_path / "m"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(FIX, d)
    if config is not None:
        (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if tensors is not None:
        from safetensors.numpy import save_file

        save_file(tensors, str(d / "model.safetensors"))
    return d


def test_wrong_dtype_tensor(tmp_path):
    from safetensors.numpy import load_file

    t = load_file(str(FIX / "model.safetensors"))
    t["transformer.h.0.ln_1.weight"] = np.zeros(64, np.int32)
    with pytest.raises(ValueError, match="dtype int32; expected floating point"):
        GPT.from_pretrained(_folder_with(tmp_path, tensors=t))


def test_half_precision_checkpoint_is_upcast(tmp_path):
    from safetensors.numpy import load_file

    t = {k: v.astype(np.float16) for k, v in load_file(str(FIX / "model.safetensors")).items()}
    model = GPT.from_pretrained(_folder_with(tmp_path, tensors=t))
    assert model.embeddings.wte.dtype == np.float32


fields = st.sampled_from(["vocab_size", "n_positions", "n_layer", "n_head", "n_embd", "n_inner",
                          "layer_norm_epsilon", "activation_function"])
values = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(), max_size=2))


@SETTINGS
@given(changes=st.dictionaries(fields, values, min_size=1, max_size=4), drop=st.booleans())
@example(changes={"n_layer": 40265318}, drop=False)  # once grew pytest to 24 GB (set(range(n_layer)))
def test_malformed_config(tmp_path, changes, drop):
    cfg = dict(CONFIG)
    cfg.update(changes)
    if drop:
        cfg.pop(next(iter(changes)))
    d = _folder_with(tmp_path, cfg)
    try:
        GPT.from_pretrained(d)
    except (ValueError, FileNotFoundError):
        pass


@pytest.mark.parametrize("field", ["vocab_size", "n_positions", "n_layer", "n_head", "n_embd", "n_inner"])
@pytest.mark.parametrize("value", [10**6, 40265318, 2**62])
def test_huge_config_integers_are_refused_from_the_file(tmp_path, field, value):
    """A config integer far beyond what the checkpoint holds is a ValueError found by comparing with
    the file, before anything proportional to it (layers, shapes-only model) is built."""
    cfg = dict(CONFIG, **{field: value})
    if field == "n_head":
        cfg["n_embd"] = value  # divisible, so only the comparison with the file can refuse it
    with pytest.raises(ValueError, match="config.json"):
        GPT.from_pretrained(_folder_with(tmp_path, cfg))


def test_huge_bert_config_is_refused(tmp_path):
    from qkv.io import find_minilm
    from qkv.nn import Encoder

    try:
        src = find_minilm()
    except FileNotFoundError:
        pytest.skip("the packaged all-MiniLM-L6-v2 is not installed")
    d = tmp_path / "bert"
    shutil.copytree(src, d)
    cfg = json.loads((d / "config.json").read_text())
    for field in ("num_hidden_layers", "intermediate_size", "max_position_embeddings", "type_vocab_size"):
        (d / "config.json").write_text(json.dumps(dict(cfg, **{field: 40265318})))
        with pytest.raises(ValueError, match="config.json"):
            Encoder.from_pretrained(d)


def test_address_space_cap_turns_a_huge_allocation_into_memoryerror():
    """The guard itself: under the cap (autouse here), 64 GiB is a MemoryError, not an OOM kill."""
    with pytest.raises(MemoryError):
        np.ones(8 << 30)


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "null", '{"n_layer": "two"}', "\xff\xfe"])
def test_unreadable_config(tmp_path, text):
    with pytest.raises(ValueError):
        GPT.from_pretrained(_folder_with(tmp_path, text))


@pytest.mark.parametrize("cfg_change, match", [
    ({"model_type": "t5"}, "model_type 't5' is not supported; qkv loads 'gpt2'"),
    ({"model_type": "llama"}, "GPT.from_pretrained reads a GPT-2 decoder"),
    ({"model_type": "bert"}, "GPT.from_pretrained reads a GPT-2 decoder"),
])
def test_model_type_is_checked_by_the_library(tmp_path, cfg_change, match):
    """GPT.from_pretrained itself (not only the CLI) refuses a folder of another model type."""
    with pytest.raises(ValueError, match=match):
        GPT.from_pretrained(_folder_with(tmp_path, dict(CONFIG, **cfg_change)))


def test_encoder_refuses_a_gpt_folder(tmp_path):
    from qkv.nn import Encoder

    with pytest.raises(ValueError, match="Encoder.from_pretrained reads a BERT-family encoder"):
        Encoder.from_pretrained(_folder_with(tmp_path))


# Llama-family folders (qkv.nn.Llama): the sharded tiny_llama fixture, its config.json and its
# model.safetensors.index.json made hostile.

LLAMA = Path(__file__).parent / "fixtures" / "tiny_llama"
LLAMA_CONFIG = json.loads((LLAMA / "config.json").read_text())
LLAMA_INDEX = json.loads((LLAMA / "model.safetensors.index.json").read_text())


def _llama_with(tmp_path, config=None, index=None):
    d = tmp_path / "llama"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(LLAMA, d)
    if config is not None:
        (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if index is not None:
        (d / "model.safetensors.index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    return d


llama_fields = st.sampled_from(["vocab_size", "max_position_embeddings", "num_hidden_layers", "num_attention_heads",
                                "num_key_value_heads", "hidden_size", "intermediate_size", "head_dim", "rms_norm_eps",
                                "rope_parameters", "rope_scaling", "rope_theta", "tie_word_embeddings", "hidden_act",
                                "attention_bias", "mlp_bias", "model_type"])
llama_values = st.one_of(values, st.dictionaries(st.sampled_from(["rope_type", "factor", "low_freq_factor",
                                                                  "high_freq_factor", "rope_theta",
                                                                  "original_max_position_embeddings"]),
                                                 st.one_of(st.floats(allow_nan=True), st.integers(-10, 10**12),
                                                           st.sampled_from(["llama3", "default", "yarn"])),
                                                 max_size=6))


@SETTINGS
@given(changes=st.dictionaries(llama_fields, llama_values, min_size=1, max_size=4), drop=st.booleans())
@example(changes={"num_hidden_layers": 40265318}, drop=False)
@example(changes={"model_type": []}, drop=False)  # was a TypeError (unhashable) in the model_type lookup
@example(changes={"head_dim": 10**12, "num_attention_heads": 1}, drop=False)
def test_malformed_llama_config(tmp_path, changes, drop):
    from qkv.nn import Llama

    cfg = dict(LLAMA_CONFIG)
    cfg.update(changes)
    if drop:
        cfg.pop(next(iter(changes)))
    try:
        Llama.from_pretrained(_llama_with(tmp_path, cfg))
    except (ValueError, FileNotFoundError):
        pass


@pytest.mark.parametrize("field", ["vocab_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                   "hidden_size", "intermediate_size", "head_dim"])
@pytest.mark.parametrize("value", [10**6, 40265318, 2**62])
def test_huge_llama_config_integers_are_refused_from_the_file(tmp_path, field, value):
    from qkv.nn import Llama

    cfg = dict(LLAMA_CONFIG, **{field: value})
    if field in ("num_attention_heads", "num_key_value_heads"):
        cfg.update(num_attention_heads=value, num_key_value_heads=value, hidden_size=value, head_dim=16)
    with pytest.raises(ValueError, match="config.json"):
        Llama.from_pretrained(_llama_with(tmp_path, cfg))


def test_huge_llama_context_sizes_nothing(tmp_path):
    """max_position_embeddings sizes no tensor of a rotary model (nothing is bounded by it); a huge
    one loads, and generation allocates for the tokens asked, never for the context."""
    from qkv.nn import Llama

    model = Llama.from_pretrained(_llama_with(tmp_path, dict(LLAMA_CONFIG, max_position_embeddings=2**62)))
    assert model.generate([3, 4, 5], 4, top_k=1, eos_token_id=None)[0].shape == (7,)


@SETTINGS
@given(index=st.one_of(
    st.text(max_size=40),
    st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=12)),
                 lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=8), c, max_size=3)),
                 max_leaves=8),
    st.dictionaries(st.sampled_from(list(LLAMA_INDEX["weight_map"])),
                    st.one_of(st.sampled_from(["../x.safetensors", "/etc/passwd", "model-00001-of-00003.safetensors",
                                               "nope.safetensors", "", ".", "a/b.safetensors"]), st.integers()),
                    min_size=1, max_size=4).map(lambda m: {"weight_map": {**LLAMA_INDEX["weight_map"], **m}})))
def test_hostile_safetensors_index(tmp_path, index):
    from qkv.nn import Llama

    d = _llama_with(tmp_path, index=index if isinstance(index, str) else json.dumps(index))
    try:
        Llama.from_pretrained(d)
    except (ValueError, FileNotFoundError):
        pass
