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


@pytest.mark.parametrize("H, L, heads", [(12, 300, None), (12, 300, "mean"), (48, 64, None), (1, 2000, None)])
def test_heatmap_size_is_bounded(tmp_path, H, L, heads):
    # the figure used to grow as 0.32 in per token per panel: 12 heads of 300 tokens made a
    # 30000 x 23000 px canvas (minutes, > 7 GB); now every side is capped and labels are thinned
    rng = np.random.default_rng(0)
    w = rng.random((H, L, L))
    w /= w.sum(-1, keepdims=True)
    tokens = [f"tok{i}" for i in range(L)]
    width, height = png_size(plot.attention_heatmap(w, tokens, tmp_path / "big.png", heads=heads, title="t" * 500))
    assert 200 < width <= plot.MAX_SIDE_PX and 200 < height <= plot.MAX_SIDE_PX


def test_heatmap_layout():
    lay = plot.Layout(12, 300, 8)  # 12 heads of 300 tokens, labels up to 8 characters
    assert (lay.rows, lay.cols) == (3, 4) and lay.fig_w * lay.dpi <= plot.MAX_SIDE_PX
    assert lay.stride > 1 and 300 / lay.stride * plot.LABEL_PITCH_IN <= lay.side  # the labels that show fit
    small = plot.Layout(1, 8, 5)
    assert small.stride == 1 and small.side == plot.SMALL_PANEL_IN and small.dpi == 100


def test_heatmap_mean_and_suffix(tmp_path):
    w = np.full((3, 4, 4), 0.25)
    path = plot.attention_heatmap(w, list("abcd"), tmp_path / "noext", heads="mean")
    assert path == tmp_path / "noext.png" and png_size(path)[0] > 100
    with pytest.raises(ValueError, match="'mean'"):
        plot.attention_heatmap(w, list("abcd"), tmp_path / "x.png", heads="max")
