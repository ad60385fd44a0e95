"""Side-by-side timings of the row backward kernels on the CPU (one process, interleaved rounds,
medians), at GPT-2 small training shapes (B*T = 8*512 rows, C = 768, 4C = 3072).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/backward_cpu.py \\
        [--rounds 11] [--out benchmarks/results/backward_cpu]

- layer_norm_backward [4096, 768] (saved mean/rstd; dx, dweight, dbias) vs torch's
  native_layer_norm_backward with its own saved statistics (the backward alone, no autograd);
- gelu_backward [4096, 3072], tanh and erf forms, vs torch's aten gelu_backward;
  targets: qkv >= torch (time ratio qkv / torch <= 1);
- linear_backward (dx, dweight, dbias) of the MLP's two linears, [4096, 768] x [768, 3072] with
  GELU(tanh) and [4096, 3072] x [3072, 768] without, vs the two bare GEMMs it contains
  (dx = g W^T, dW = x^T g): the same two SciPy BLAS calls qkv makes, and NumPy's matmul (its own
  OpenBLAS build) for context; target: qkv / the SciPy pair <= 1.15 (the NumPy ratio is shown too).
The NumPy reference backend is timed for the row ops as a floor. Writes <out>.json and <out>.md.
"""

import numpy as np
from scipy.linalg import blas

import qkv
from qkv import _reference as ref

from _report import cli, side_by_side, write  # benchmarks/_report.py

try:
    import torch
except ImportError:  # torch is optional: only a baseline
    torch = None

R, C, H = 4096, 768, 3072


def workloads(rng):
    rows = {}
    # layer norm
    x = (rng.standard_normal((R, C)) * 2 + 0.5).astype(np.float32)
    dy = rng.standard_normal((R, C)).astype(np.float32)
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    _, mean, rstd = qkv.layer_norm(x, w, b, return_stats=True)
    ln = "layer_norm_backward [4096,768]"
    rows[ln] = {
        "qkv": lambda: qkv.layer_norm_backward(dy, x, w, b, mean=mean, rstd=rstd),
        "numpy ref": lambda: ref.layer_norm_backward(dy, x, w, b, 1e-5, mean, rstd),
    }
    # GELU
    h = rng.standard_normal((R, H)).astype(np.float32)
    dh = rng.standard_normal((R, H)).astype(np.float32)
    for form in ("tanh", "none"):
        rows[f"gelu_backward {form} [4096,3072]"] = {
            "qkv": lambda form=form: qkv.gelu_backward(dh, h, form),
            "numpy ref": lambda form=form: ref.gelu_backward(dh, h, form),
        }
    # linear: c_fc (768 -> 3072, GELU) and c_proj (3072 -> 768, no activation), with biases
    for name, K, N, act in (("linear_backward gelu_tanh [4096,768]x[768,3072]", C, H, "gelu_tanh"),
                            ("linear_backward none [4096,3072]x[3072,768]", H, C, None)):
        xl = rng.standard_normal((R, K)).astype(np.float32)
        W = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
        bl = rng.standard_normal(N).astype(np.float32)
        _, pre = qkv.linear(xl, W, bl, act, return_preact=True)
        dyl = rng.standard_normal((R, N)).astype(np.float32)

        def scipy_pair(W=W, xl=xl, g=dyl):
            # the two calls qkv makes, on F-ordered views of the C arrays (the wrapper copies nothing):
            # dx^T (K, R) = W (K, N) @ g^T;  dW^T (N, K) = g^T (N, R) @ x (R, K)
            return blas.sgemm(1.0, W.T, g.T, trans_a=1), blas.sgemm(1.0, g.T, xl.T, trans_b=1)

        rows[name] = {
            "qkv": lambda xl=xl, W=W, bl=bl, act=act, pre=pre, dyl=dyl: qkv.linear_backward(
                dyl, xl, W, bl, act, preact=None if act is None else pre),
            "2 bare GEMMs (SciPy BLAS)": scipy_pair,
            "2 bare GEMMs (NumPy)": lambda xl=xl, W=W, g=dyl: (g @ W.T, xl.T @ g),
        }
    if torch is not None:
        torch.set_num_threads(qkv.get_num_threads())
        tx, tdy, tw, tb = (torch.from_numpy(a) for a in (x, dy, w, b))
        _, tmean, trstd = torch.ops.aten.native_layer_norm(tx, [C], tw, tb, 1e-5)
        rows[ln]["torch"] = lambda: torch.ops.aten.native_layer_norm_backward(
            tdy, tx, [C], tmean, trstd, tw, tb, [True, True, True])
        th, tdh = torch.from_numpy(h), torch.from_numpy(dh)
        for form in ("tanh", "none"):
            rows[f"gelu_backward {form} [4096,3072]"]["torch"] = (
                lambda form=form: torch.ops.aten.gelu_backward(tdh, th, approximate=form))
    return rows


def main():
    args = cli(__doc__, rounds=11, out="benchmarks/results/backward_cpu")
    med, meta, lines = side_by_side("Backward kernels, CPU", workloads(np.random.default_rng(0)), args.rounds)
    targets = {}
    lines += ["## Targets", "", "| workload | ratio | target | met |", "|---|---|---|---|"]
    for name, impls in med.items():
        if "torch" in impls:
            ratio, target, what = impls["qkv"] / impls["torch"], 1.0, "qkv / torch"
        elif name.startswith("linear_backward"):
            ratio, target = impls["qkv"] / impls["2 bare GEMMs (SciPy BLAS)"], 1.15
            what = (f"qkv / the same 2 SciPy GEMMs; / NumPy's pair: "
                    f"{impls['qkv'] / impls['2 bare GEMMs (NumPy)']:.3f}")
        else:
            continue
        targets[name] = {"ratio": ratio, "target": target, "met": ratio <= target, "what": what}
        lines.append(f"| {name} ({what}) | {ratio:.3f} | <= {target} | {'yes' if ratio <= target else 'no'} |")
    write(args.out, "\n".join(lines) + "\n", {"meta": meta, "median_seconds": med, "targets": targets})


if __name__ == "__main__":
    main()
