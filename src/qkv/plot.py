"""Pictures of what attention does (matplotlib is an optional extra: ``pip install 'qkv[plot]'``).

``attention_heatmap(weights, tokens, path)`` draws one panel per head of an attention pattern
(queries down, keys across, token labels on both axes) and writes a PNG. ``weights`` is what
``qkv.attention(..., return_weights=True)`` or a model trace returns for one layer: (H, Lq, Lk) or
(Lq, Lk), NumPy or CuPy (CuPy is copied to the host explicitly here, for drawing only).
"""

import math

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
        raise ImportError("qkv.plot needs matplotlib: pip install 'qkv[plot]'") from exc
    return plt


def attention_heatmap(weights, tokens, path, *, key_tokens=None, heads=None, title=None, cols=4, dpi=100):
    """Write a PNG heatmap of attention weights and return its path.

    Parameters
    ----------
    weights : array (H, Lq, Lk) or (Lq, Lk)
        Attention probabilities (rows sum to 1).
    tokens : list of str, length Lq
        Query token labels (also the key labels unless ``key_tokens`` is given).
    path : str or Path
        Where to write the PNG.
    key_tokens : list of str, length Lk, optional
    heads : int or list of int, optional
        Which heads to draw (default all).
    title : str, optional
    cols : int
        Panels per row.
    """
    if hasattr(weights, "get"):  # CuPy: an explicit copy to the host, for drawing
        weights = weights.get()
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3:
        raise ValueError(f"attention_heatmap: weights must be (H, Lq, Lk) or (Lq, Lk), got shape {w.shape}")
    H, Lq, Lk = w.shape
    key_tokens = list(tokens) if key_tokens is None else list(key_tokens)
    if len(tokens) != Lq or len(key_tokens) != Lk:
        raise ValueError(
            f"attention_heatmap: {len(tokens)} query and {len(key_tokens)} key labels for weights of shape {w.shape}"
        )
    if heads is None:
        heads = list(range(H))
    elif isinstance(heads, int):
        heads = [heads]
    for h in heads:
        if not 0 <= h < H:
            raise ValueError(f"attention_heatmap: head {h} out of range for {H} heads")
    plt = _pyplot()
    n = len(heads)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    cell = max(2.5, 0.32 * max(Lq, Lk) + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 1.5, cell * rows + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, h in zip(axes.flat, heads):
        im = ax.imshow(w[h], cmap="viridis", vmin=0.0, vmax=1.0, aspect="equal", interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xticks(range(Lk))
        ax.set_xticklabels(key_tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(Lq))
        ax.set_yticklabels(tokens, fontsize=7)
        ax.set_xlabel("key", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="attention weight")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
