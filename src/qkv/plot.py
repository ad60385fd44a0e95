"""Pictures of what attention does (matplotlib, a dependency of qkv).

``grid_heatmap(values, path, row_labels=..., col_labels=...)`` draws one (rows, columns) grid with a
word in each cell: the logit lens (layers x positions, the top token, coloured by its probability)
and activation patching (layers x positions, the patching effect) of ``qkv inspect``.

``attention_heatmap(weights, tokens, path)`` draws one panel per head of an attention pattern
(queries down, keys across, token labels on both axes), or one panel of the mean over heads, and
writes a PNG. ``weights`` is what ``qkv.attention(..., return_weights=True)`` or a model trace returns
for one layer: (H, Lq, Lk) or (Lq, Lk), NumPy or CuPy (CuPy is copied to the host explicitly here,
for drawing only).

Any input gives a readable PNG in bounded time and memory: a panel grows with the tokens up to
PANEL_IN, the whole figure shrinks to fit MAX_SIDE_PX on each side, and past what fits only every
k-th token is labelled (the rendering cost is the pixels and the labels, never L x L text).
"""

import math
from pathlib import Path

import numpy as np

PER_TOKEN_IN = 0.2  # inches of panel per token while there is room (7-pt labels need LABEL_PITCH_IN)
PANEL_IN = (1.0, 12.0)  # a panel's side, inches: least, most
SMALL_PANEL_IN = 2.5  # a panel is at least this big when the figure has room for it
LABEL_PITCH_IN = 0.12  # the least room between two tick labels, inches (labels are 7 pt)
LABEL_CHAR_IN = 0.065  # width of one character of a 7-pt label, inches (DejaVu Sans, roughly)
MAX_SIDE_PX = 4000  # no side of the PNG is larger, whatever the input
TEXT_CELL_IN = (0.6, 0.3)  # grid_heatmap: a cell this big (width, height) holds a 7-pt label


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - only in a broken install
        raise ImportError(f"qkv.plot needs matplotlib, a dependency of qkv that is missing here ({exc}): "
                          "pip install matplotlib") from exc
    return plt


class Layout:
    """The one place that decides how big a heatmap is (all lengths in inches).

    Panels are squares of side ``side`` in a rows x cols grid; only the outer panels carry token
    labels (the left column the query labels, the bottom row the key labels), so the label count
    grows with rows + cols, not with the number of panels. ``fig_w * dpi`` and ``fig_h * dpi`` never
    exceed MAX_SIDE_PX; ``stride`` labels every stride-th token when not all of them fit.
    """

    def __init__(self, n_panels, n_tokens, label_chars, *, cols=4, dpi=100, title=False):
        self.cols = cols = max(1, min(cols, n_panels))
        self.rows = rows = math.ceil(n_panels / cols)
        label = LABEL_CHAR_IN * min(label_chars, 16) + 0.45  # tick labels + the axis name
        self.left, self.bottom = label + 0.1, label + 0.1
        self.top, self.right = 0.3 + 0.4 * bool(title), 1.1  # panel titles (+ suptitle); colorbar
        self.gap_w, self.gap_h = 0.15, 0.3
        fixed_w = self.left + self.right + (cols - 1) * self.gap_w
        fixed_h = self.bottom + self.top + (rows - 1) * self.gap_h
        fit = min((MAX_SIDE_PX / dpi - fixed_w) / cols, (MAX_SIDE_PX / dpi - fixed_h) / rows)
        side = min(max(PER_TOKEN_IN * n_tokens + 0.5, SMALL_PANEL_IN), PANEL_IN[1], fit)
        self.side = side = max(side, PANEL_IN[0])
        self.fig_w, self.fig_h = fixed_w + cols * side, fixed_h + rows * side
        self.dpi = min(dpi, math.floor(MAX_SIDE_PX / max(self.fig_w, self.fig_h)))  # only if PANEL_IN[0] did not fit
        self.stride = math.ceil(n_tokens / max(1, int(side / LABEL_PITCH_IN)))

    def panel_box(self, r, c):
        """[left, bottom, width, height] of panel (r, c) as fractions of the figure."""
        x = self.left + c * (self.side + self.gap_w)
        y = self.fig_h - self.top - (r + 1) * self.side - r * self.gap_h
        return [x / self.fig_w, y / self.fig_h, self.side / self.fig_w, self.side / self.fig_h]

    def colorbar_box(self):
        h = min(self.fig_h - self.top - self.bottom, 4.0)
        y = self.fig_h - self.top - h
        return [(self.fig_w - self.right + 0.25) / self.fig_w, y / self.fig_h, 0.15 / self.fig_w, h / self.fig_h]


def attention_heatmap(weights, tokens, path, *, key_tokens=None, heads=None, title=None, cols=4, dpi=100):
    """Write a PNG heatmap of attention weights and return its path (``.png`` added if it has no suffix).

    Parameters
    ----------
    weights : array (H, Lq, Lk) or (Lq, Lk)
        Attention probabilities (rows sum to 1).
    tokens : list of str, length Lq
        Query token labels (also the key labels unless ``key_tokens`` is given).
    path : str or Path
        Where to write the PNG.
    key_tokens : list of str, length Lk, optional
    heads : int, list of int or "mean", optional
        Which heads to draw, one panel each (default all); "mean" draws one panel, the mean over
        the heads (what a long input is drawn as).
    title : str, optional
    cols : int
        Panels per row.
    dpi : int
        Pixels per inch (lowered if the figure would exceed MAX_SIDE_PX).
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
    if isinstance(heads, str):
        if heads != "mean":
            raise ValueError(f"attention_heatmap: heads must be an int, a list of ints or 'mean', got {heads!r}")
        panels = [(f"mean of {H} heads", w.mean(axis=0))]
    else:
        heads = list(range(H)) if heads is None else [heads] if isinstance(heads, int) else list(heads)
        for h in heads:
            if not 0 <= h < H:
                raise ValueError(f"attention_heatmap: head {h} out of range for {H} heads")
        panels = [(f"head {h}", w[h]) for h in heads]
    lay = Layout(len(panels), max(Lq, Lk), max(map(len, [*tokens, *key_tokens]), default=1), cols=cols, dpi=dpi,
                 title=bool(title))
    plt = _pyplot()
    fig = plt.figure(figsize=(lay.fig_w, lay.fig_h))
    k = lay.stride
    every = "" if k == 1 else f" (1 in {k} labelled)"
    for i, (name, p) in enumerate(panels):  # p (Lq, Lk)
        r, c = divmod(i, lay.cols)
        ax = fig.add_axes(lay.panel_box(r, c))
        im = ax.imshow(p, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        ax.set_title(name, fontsize=9, pad=3)
        # ticks are costly matplotlib objects: only the outer panels get them
        if c == 0:
            ax.set_yticks(range(0, Lq, k), tokens[::k], fontsize=7)
            ax.set_ylabel("query" + every, fontsize=8)
        else:
            ax.set_yticks([])
        if i + lay.cols >= len(panels):  # nothing below it: the bottom of its column
            ax.set_xticks(range(0, Lk, k), key_tokens[::k], rotation=90, fontsize=7)
            ax.set_xlabel("key" + every, fontsize=8)
        else:
            ax.set_xticks([])
    fig.colorbar(im, cax=fig.add_axes(lay.colorbar_box()), label="attention weight")
    if title:
        fig.suptitle(title, y=1 - 0.1 / lay.fig_h, va="top")
    path = Path(path)
    if not path.suffix:  # what matplotlib would do, said here so the returned path is the file's
        path = path.with_suffix(".png")
    fig.savefig(path, dpi=lay.dpi)  # no bbox_inches="tight": it would let a long title grow the PNG
    plt.close(fig)
    return path


def grid_heatmap(values, path, *, row_labels, col_labels, cell_text=None, cmap="viridis", vmin=None, vmax=None,
                 colorbar_label="", xlabel="", ylabel="", title=None, dpi=100):
    """Write a PNG of one (R, K) grid of values and return its path (``.png`` added if it has no suffix).

    Row 0 is drawn at the bottom (layers go up, as a network is drawn); ``row_labels`` (R) and
    ``col_labels`` (K) label the axes; ``cell_text`` (R, K) strings are written in the cells while
    they fit (cells of at least TEXT_CELL_IN), colour = the value. The figure is bounded as
    attention_heatmap's: no side over MAX_SIDE_PX, labels thinned to one in ``stride`` past what fits.
    """
    v = np.asarray(values.get() if hasattr(values, "get") else values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"grid_heatmap: values must be (rows, columns), got shape {v.shape}")
    R, K = v.shape
    if len(row_labels) != R or len(col_labels) != K:
        raise ValueError(f"grid_heatmap: {len(row_labels)} row and {len(col_labels)} column labels for values of "
                         f"shape {v.shape}")
    if cell_text is not None and np.shape(cell_text) != v.shape:
        raise ValueError(f"grid_heatmap: cell_text has shape {np.shape(cell_text)}, values {v.shape}")
    left = LABEL_CHAR_IN * min(max(map(len, row_labels), default=1), 16) + 0.55
    bottom = LABEL_CHAR_IN * min(max(map(len, col_labels), default=1), 16) + 0.55
    top, right = 0.3 + 0.45 * bool(title), 1.4
    room_w, room_h = MAX_SIDE_PX / dpi - left - right, MAX_SIDE_PX / dpi - bottom - top
    cell_w = min(TEXT_CELL_IN[0] if cell_text is not None else 0.3, room_w / K)
    cell_h = min(TEXT_CELL_IN[1] if cell_text is not None else 0.3, room_h / R)
    show_text = cell_text is not None and cell_w >= TEXT_CELL_IN[0] * 0.6 and cell_h >= TEXT_CELL_IN[1] * 0.6
    grid_w, grid_h = max(cell_w * K, 2.0), max(cell_h * R, 2.0)  # room for the axis and colour-bar labels
    fig_w, fig_h = left + grid_w + right, bottom + grid_h + top
    sx = math.ceil(K / max(1, int(grid_w / LABEL_PITCH_IN)))
    sy = math.ceil(R / max(1, int(grid_h / LABEL_PITCH_IN)))
    plt = _pyplot()
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes([left / fig_w, bottom / fig_h, grid_w / fig_w, grid_h / fig_h])
    im = ax.imshow(v, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest", origin="lower")
    ax.set_xticks(range(0, K, sx), list(col_labels)[::sx], rotation=90, fontsize=7)
    ax.set_yticks(range(0, R, sy), list(row_labels)[::sy], fontsize=7)
    ax.set_xlabel(xlabel + ("" if sx == 1 else f" (1 in {sx} labelled)"), fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    if show_text:
        size = max(4.0, min(7.0, 72 * cell_h * 0.5))
        for r in range(R):
            for c in range(K):
                rgba = im.cmap(im.norm(v[r, c]))
                dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
                ax.text(c, r, str(cell_text[r][c])[:8], ha="center", va="center", fontsize=size,
                        color="white" if dark else "black", clip_on=True)
    cb_h = min(grid_h, 4.0)
    cax = fig.add_axes([(left + grid_w + 0.25) / fig_w, (bottom + grid_h - cb_h) / fig_h, 0.15 / fig_w, cb_h / fig_h])
    fig.colorbar(im, cax=cax, label=colorbar_label)
    if title:
        fig.suptitle(title, y=1 - 0.1 / fig_h, va="top", fontsize=10)
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    fig.savefig(path, dpi=min(dpi, math.floor(MAX_SIDE_PX / max(fig_w, fig_h))))
    plt.close(fig)
    return path
