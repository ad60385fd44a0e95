"""Attention throughput against sequence length: qkv, torch SDPA and the NumPy reference, one plot.

Measures self-attention forward, float32, B = 1, H = 12, D = 64, causal and not, for
L = 128 ... 4096 (GFLOP/s in FlashAttention's convention: 4*B*H*L^2*D, halved for causal), then
writes benchmarks/results/attention_throughput.{json,png}. The NumPy reference materialises
(1, 12, L, L) float64 scores (~0.4 GB per array at L = 2048, four times that at 4096), so it stops
at --numpy-max-L (default 2048).

    python benchmarks/plot_attention.py                    # measure and plot (a few minutes)
    python benchmarks/plot_attention.py --from-json FILE   # re-plot saved measurements
Needs matplotlib (pip install 'qkv[plot]'); torch is measured when installed.
"""

import argparse
import json
import os
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
LENGTHS = (128, 256, 512, 1024, 2048, 4096)
H, D = 12, 64


def measure(lengths, numpy_max_L, budget):
    import qkv
    from qkv import _bench

    impls = []
    for name in ("cpu", "torch", "numpy"):
        try:
            impls.append(_bench.Impl(name))
        except _bench.Unavailable as exc:
            print(f"skipping {name}: {exc}")
    rows = []
    rng = np.random.default_rng(0)
    for L in lengths:
        for causal in (False, True):
            case = _bench.Attention(rng, L, L, causal, "attention_causal" if causal else "attention", f"L={L}", H=H, D=D)
            for impl in impls:
                if impl.name == "numpy" and L > numpy_max_L:
                    continue
                with impl.context():
                    t = _bench.time_call(case.build(impl), impl.sync, budget, 3)
                label = {"cpu": "qkv (cpu)", "torch": "torch SDPA", "numpy": "NumPy reference"}[impl.name]
                rows.append({"impl": label, "L": L, "causal": causal, "seconds": t, "gflops": case.flops / t / 1e9})
                print(f"L={L:5d} causal={causal!s:5} {label:<16} {t * 1e3:9.2f} ms {rows[-1]['gflops']:7.1f} GFLOP/s")
    return {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "threads": qkv.get_num_threads(),
            "shape": f"B=1 H={H} D={D} float32", "rows": rows}


def plot(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    colors = {"qkv (cpu)": "tab:blue", "torch SDPA": "tab:orange", "NumPy reference": "tab:gray"}
    for impl, color in colors.items():
        for causal, style in ((False, "-"), (True, "--")):
            pts = sorted((r["L"], r["gflops"]) for r in data["rows"] if r["impl"] == impl and r["causal"] == causal)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, marker="o", ms=3, color=color,
                        label=f"{impl}{', causal' if causal else ''}")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["L"] for r in data["rows"]})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("sequence length L")
    ax.set_yscale("log")  # the reference is ~100x below the fused kernels
    ax.set_ylabel("GFLOP/s (4·B·H·L²·D, causal halved), log scale")
    ax.set_title(f"Attention forward, {data['shape']}, {data['threads']} threads")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from-json", metavar="FILE", help="plot these measurements instead of measuring")
    p.add_argument("--numpy-max-L", type=int, default=2048, help="longest L for the NumPy reference")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="comma-separated L values")
    p.add_argument("--budget", type=float, default=0.5, help="seconds of timing per point")
    p.add_argument("--out", default=RESULTS, help="folder for attention_throughput.{json,png}")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
    else:
        data = measure([int(x) for x in args.lengths.split(",")], args.numpy_max_L, args.budget)
        with open(os.path.join(args.out, "attention_throughput.json"), "w") as f:
            json.dump(data, f, indent=2)
    plot(data, os.path.join(args.out, "attention_throughput.png"))


if __name__ == "__main__":
    main()
