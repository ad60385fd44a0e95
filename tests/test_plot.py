"""qkv.plot.attention_heatmap writes a readable PNG of the right size."""

import struct

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import qkv  # noqa: E402
from qkv import plot  # noqa: E402

TOKENS = "a fluffy blue creature roamed the verdant forest".split()


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def test_heatmap_all_heads(tmp_path):
    q = np.random.default_rng(0).standard_normal((1, 4, len(TOKENS), 16)).astype(np.float32)
    _, w = qkv.attention(q, q, q, causal=True, return_weights=True)
    path = plot.attention_heatmap(w[0], TOKENS, tmp_path / "all.png", title="layer 0", dpi=50)
    width, height = png_size(path)
    assert width > 2 * height > 100  # four panels side by side


def test_heatmap_one_head(tmp_path):
    w = np.full((len(TOKENS), len(TOKENS)), 1 / len(TOKENS))
    width, height = png_size(plot.attention_heatmap(w, TOKENS, tmp_path / "one.png", dpi=50))
    assert 0.5 < width / height < 2.0  # one square-ish panel plus a colorbar


def test_heatmap_bad_input(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        plot.attention_heatmap(np.zeros((2, 3, 3)), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="head 5 out of range"):
        plot.attention_heatmap(np.zeros((2, 3, 3)), list("abc"), tmp_path / "x.png", heads=5)
    with pytest.raises(ValueError, match="weights must be"):
        plot.attention_heatmap(np.zeros(3), list("abc"), tmp_path / "x.png")
