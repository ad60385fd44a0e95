"""Models with low-precision weights (model.quantize, qkv.quant): accuracy against the float32
model (README's accuracy rows), save_pretrained / from_pretrained round trips, and the CLI."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qkv
from qkv.nn import GPT, Encoder
from qkv.nn.config import GPTConfig
from qkv.quant import QuantizedWeight

from conftest import needs_minilm

FIX = Path(__file__).parent / "fixtures"

SENTENCES = [
    "A man is playing a guitar on the street.",
    "The weather is lovely today, warm and sunny.",
    "Quantized weights read fewer bytes per generated token.",
    "Cats sleep for most of the day.",
    "The stock market fell sharply after the announcement.",
    "She baked a chocolate cake for her brother's birthday.",
    "How do I reset my password?",
    "Photosynthesis converts light energy into chemical energy.",
    "The train to Berlin leaves at half past eight.",
    "A quick brown fox jumps over the lazy dog.",
    "Memory bandwidth limits decoding speed on a CPU.",
    "He forgot his umbrella and got soaked in the rain.",
]


def _tiny():
    return GPT.from_pretrained(FIX / "tiny_gpt2")


def _random_gpt(fmt=None):
    """Small random-weight GPT-2 shapes (GPT-2's initialisation, fixed seed)."""
    m = GPT(GPTConfig(vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=128)).init_weights(seed=0)
    return m.quantize(fmt) if fmt else m


def test_quantize_in_place_keeps_the_rest_float32():
    m = _tiny()
    n_float = sum(p.size for _, p in m.named_parameters())
    assert m.quantize("int8") is m
    q = dict(qkv.quant.quantized_weights(m))
    assert len(q) == 4 * m.config.n_layer + 1 and "embeddings.wte" in q  # 4 linears a block + the tied head
    assert q["embeddings.wte"].shape == (m.config.vocab_size, m.config.n_embd) and q["embeddings.wte"].axis == 1
    rest = dict(m.named_parameters())
    assert all(p.dtype == np.float32 for p in rest.values())
    assert "ln_f.weight" in rest and "h.0.attn.c_attn.bias" in rest and "embeddings.wpe" in rest
    assert sum(p.size for p in rest.values()) + sum(w.size for w in q.values()) == n_float
    with pytest.raises(ValueError, match="format must be one of"):
        _tiny().quantize("fp8")


def test_bf16_gpt2_logits_and_greedy_match_float32():
    """README: bf16 GPT-2 logits within 2e-2 (relative to the largest) of float32; greedy identical."""
    r = np.load(FIX / "tiny_gpt2_ref.npz")
    ref_model, model = _tiny(), _tiny().quantize("bf16")
    ref = ref_model(r["ids"])
    logits = model(r["ids"])
    assert np.abs(logits - ref).max() <= 2e-2 * np.abs(ref).max()
    np.testing.assert_array_equal(model.generate(r["ids"][:, :5], max_new_tokens=20, top_k=1),
                                  ref_model.generate(r["ids"][:, :5], max_new_tokens=20, top_k=1))
    np.testing.assert_array_equal(model.generate(r["ids"][:, :5], max_new_tokens=20, top_k=1), r["greedy"])


def test_int8_gpt_top1_agreement():
    """README: int8 GPT (random weights, small shapes) top-1 next token = float32's at >= 98% of 512 positions."""
    ids = np.random.default_rng(1).integers(0, 512, (4, 128))  # 512 positions
    ref = _random_gpt()(ids).argmax(-1)
    got = _random_gpt("int8")(ids).argmax(-1)
    assert (got == ref).mean() >= 0.98


@pytest.mark.parametrize("fmt", ["bf16", "int8"])
def test_cached_decode_equals_full_forward(fmt):
    m = _random_gpt(fmt)
    ids = np.random.default_rng(2).integers(0, 512, (2, 12))
    full = m(ids)
    cache = m.new_cache(2, 12)
    steps = [m(ids[:, :6], cache=cache)] + [m(ids[:, t:t + 1], cache=cache) for t in range(6, 12)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4, rtol=0)


@needs_minilm
@pytest.mark.parametrize("fmt,floor", [("int8", 0.999), ("bf16", 0.9999)])
def test_minilm_embeddings_cosine(fmt, floor):
    """README: int8 MiniLM sentence embeddings have cosine >= 0.999 to the float32 ones."""
    from qkv.io import find_minilm

    ref = Encoder.from_pretrained(find_minilm()).embed(SENTENCES)
    got = Encoder.from_pretrained(find_minilm()).quantize(fmt).embed(SENTENCES)
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= floor, cos.min()


def _header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def _memory_mapped(a):
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = getattr(a, "base", None)
    return False


@pytest.mark.parametrize("fmt", ["bf16", "int8"])
def test_gpt_save_load_round_trip(tmp_path, fmt):
    r = np.load(FIX / "tiny_gpt2_ref.npz")
    m = _tiny().quantize(fmt)
    m.save_pretrained(tmp_path)
    h = _header(tmp_path / "model.safetensors")
    assert json.loads(h["__metadata__"]["qkv.quantization"])["h.0.mlp.c_fc.weight"]["format"] == fmt
    if fmt == "bf16":
        assert h["h.0.mlp.c_fc.weight"]["dtype"] == "BF16" and "h.0.mlp.c_fc.weight.scales" not in h
    else:
        assert h["h.0.mlp.c_fc.weight"]["dtype"] == "I8" and h["h.0.mlp.c_fc.weight.scales"]["dtype"] == "F16"
    assert h["ln_f.weight"]["dtype"] == "F32"
    back = GPT.from_pretrained(tmp_path)
    q = dict(qkv.quant.quantized_weights(back))
    assert len(q) == 4 * back.config.n_layer + 1
    # loading keeps the stored bytes (memory mapped), never a float32 copy of a weight
    assert all(w.format == fmt and _memory_mapped(w.data) for w in q.values())
    assert sum(p.nbytes for _, p in back.named_parameters()) == sum(p.nbytes for _, p in m.named_parameters())
    np.testing.assert_array_equal(back(r["ids"]), m(r["ids"]))
    assert back.tokenizer is not None
    np.testing.assert_array_equal(back.generate(r["ids"][:, :5], 8, top_k=1), m.generate(r["ids"][:, :5], 8, top_k=1))


@needs_minilm
def test_encoder_save_load_round_trip(tmp_path):
    from qkv.io import find_minilm

    m = Encoder.from_pretrained(find_minilm()).quantize("int8")
    m.save_pretrained(tmp_path)
    back = Encoder.from_pretrained(tmp_path)
    assert isinstance(back.layer[0].mlp.c_fc.weight, QuantizedWeight)
    assert back.max_seq_length == m.max_seq_length
    np.testing.assert_array_equal(back.embed(SENTENCES[:4]), m.embed(SENTENCES[:4]))


def test_quantized_weights_need_the_cpu():
    m = _tiny().quantize("bf16")
    x = np.ones((1, m.config.n_embd), np.float32)
    with pytest.raises(TypeError, match="x must be float32"):
        qkv.linear(x.astype(np.float64), m.h[0].mlp.c_fc.weight)


def test_cli_generate_and_embed_quantize():
    cmd = [sys.executable, "-m", "qkv", "generate", "--model", str(FIX / "tiny_gpt2"), "--prompt", "The cat",
           "--max-new-tokens", "5", "--top-k", "1", "--quantize", "int8"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    bad = subprocess.run(cmd[:-1] + ["int4"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--quantize" in bad.stderr


def test_float32_save_load_round_trip(tmp_path):
    """save_pretrained without quantization writes float32 tensors that from_pretrained reads back."""
    r = np.load(FIX / "tiny_gpt2_ref.npz")
    m = _tiny()
    m.save_pretrained(tmp_path)
    back = GPT.from_pretrained(tmp_path)
    assert not list(qkv.quant.quantized_weights(back))
    np.testing.assert_array_equal(back(r["ids"]), m(r["ids"]))
