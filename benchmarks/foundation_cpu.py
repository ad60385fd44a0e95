"""Side-by-side timings for the foundation kernels (one process, interleaved rounds, medians).

    python benchmarks/foundation_cpu.py [--rounds 15] [--out benchmarks/results/foundation_cpu]

- linear + GELU(tanh) on [512, 768] x [768, 3072] vs the bare NumPy matmul of the same shapes
  (the target: qkv within 1.15x of the bare matmul, i.e. the epilogue nearly free);
- masked softmax on [12*512, 512] rows (causal + key-padding mask) and layer_norm on [512, 768] vs
  the NumPy reference backend and torch (when installed).
Writes <out>.json and <out>.md with the machine, versions, BLAS kernels and thread counts.
"""

import numpy as np

import qkv
from qkv import _reference as ref

from _report import cli, side_by_side, write  # benchmarks/_report.py

try:
    import torch
except ImportError:  # torch is optional: only a baseline
    torch = None


def workloads(rng):
    x = rng.standard_normal((512, 768)).astype(np.float32)
    w = (rng.standard_normal((768, 3072)) / 28).astype(np.float32)
    b = rng.standard_normal(3072).astype(np.float32)
    s = rng.standard_normal((12 * 512, 512)).astype(np.float32)
    keep = np.broadcast_to(np.arange(512) < 480, (512, 512))  # key padding: 32 padded keys
    g = rng.standard_normal(768).astype(np.float32)
    y_lin = np.empty((512, 3072), np.float32)
    y_sm = np.empty_like(s)
    y_ln = np.empty_like(x)
    s3 = s.reshape(12, 512, 512)
    rows = {
        "linear+gelu [512,768]x[768,3072]": {
            "qkv": lambda: qkv.linear(x, w, b, "gelu_tanh"),
            "qkv out=": lambda: qkv.linear(x, w, b, "gelu_tanh", out=y_lin),
            "numpy matmul (bare)": lambda: x @ w,
            "numpy ref (matmul+bias+gelu)": lambda: ref.linear(x, w, b, "gelu_tanh"),
        },
        "softmax causal+pad [12*512,512]": {
            "qkv": lambda: qkv.softmax(s3, mask=keep, causal=True, scale=0.125),
            "qkv out=": lambda: qkv.softmax(s3, mask=keep, causal=True, scale=0.125, out=y_sm.reshape(s3.shape)),
            "numpy ref": lambda: ref.softmax(s3, mask=keep, causal="bottom_right", scale=0.125),
        },
        "layer_norm [512,768]": {
            "qkv": lambda: qkv.layer_norm(x, g, g),
            "qkv out=": lambda: qkv.layer_norm(x, g, g, out=y_ln),
            "numpy ref": lambda: ref.layer_norm(x, g, g),
        },
    }
    if torch is not None:
        tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        ts = torch.from_numpy(s3)
        tmask = torch.from_numpy(np.ascontiguousarray(keep & (np.arange(512)[None, :] <= np.arange(512)[:, None])))
        tg = torch.from_numpy(g)
        lin = torch.nn.Linear(768, 3072)
        with torch.no_grad():
            lin.weight.copy_(tw.T)
            lin.bias.copy_(tb)

        def t_linear():
            with torch.no_grad():
                return torch.nn.functional.gelu(lin(tx), approximate="tanh")

        rows["linear+gelu [512,768]x[768,3072]"]["torch Linear+GELU"] = t_linear
        rows["softmax causal+pad [12*512,512]"]["torch softmax(masked_fill)"] = (
            lambda: torch.softmax((ts * 0.125).masked_fill(~tmask, float("-inf")), dim=-1))
        rows["layer_norm [512,768]"]["torch layer_norm"] = lambda: torch.nn.functional.layer_norm(tx, (768,), tg, tg)
    return rows


def main():
    args = cli(__doc__, rounds=15, out="benchmarks/results/foundation_cpu")
    med, meta, lines = side_by_side("Foundation kernels, CPU", workloads(np.random.default_rng(0)), args.rounds)
    lin = med["linear+gelu [512,768]x[768,3072]"]
    lines.append(f"linear+GELU / bare NumPy matmul: {lin['qkv'] / lin['numpy matmul (bare)']:.3f} "
                 f"(out=: {lin['qkv out='] / lin['numpy matmul (bare)']:.3f}); target <= 1.15")
    write(args.out, "\n".join(lines) + "\n", {"meta": meta, "median_seconds": med})


if __name__ == "__main__":
    main()
