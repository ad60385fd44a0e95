"""One training step on the CPU, qkv against PyTorch eager, side by side (one process, interleaved
rounds, medians), at nanoGPT's shapes.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/train_cpu.py \\
        [--models baby,char,small] [--rounds 7] [--threads N] [--cpu-time] [--memory] \\
        [--out benchmarks/results/train_cpu]

A step is what the training loop does per batch: forward, backward, global-norm clipping at 1.0
and an AdamW update, on the same model, batch and thread count:
- qkv: GPT.value_and_grad + qkv.optim.clip_grad_norm + qkv.optim.AdamW.step;
- torch: the nanoGPT-style torch.nn GPT of tests/fixtures/make_train_fixture.py (GPT-2 layout, tied
  head, scaled_dot_product_attention, no dropout), loss.backward(), clip_grad_norm_,
  torch.optim.AdamW (the default single-tensor path on the CPU, nanoGPT's decay grouping).
Both start from the same weights (GPT.init_weights copied into torch). Models:
- baby: nanoGPT's CPU "baby GPT" (4 layers, 4 heads, 128 wide, block 64, batch 12, vocab 65);
- char: shakespeare-char (6 layers, 6 heads, 384 wide, block 256), batch 8, vocab 65;
- small: GPT-2 small's shapes (12 layers, 12 heads, 768 wide, vocab 50257), block 256, batch 2.
FLOPs per step: 6 N (B T) for the parameters' matmuls (N all parameters; the tied head does real
work) plus attention's 12 L T C per token (forward + backward, nanoGPT's estimate_mfu count,
without halving for the causal mask); reported as a fraction of this machine's float32 FMA peak
measured in the same run. Writes <out>.json and <out>.md.

--threads N: both libraries on N threads (default: qkv's count). --cpu-time: time each step by the
process's CPU time instead of the wall clock (with --threads 1 that is the work done, whatever else
the shared machine runs). --memory: each implementation's peak memory of training, in a child
process per implementation: the resident set polled while the optimizer is built and 3 steps run,
minus the resident set once the model's weights exist (so: gradients, optimizer moments,
activations and every transient).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import qkv
from qkv._bench import fma_peak
from qkv.nn import GPT, GPTConfig
from qkv.optim import AdamW, clip_grad_norm

from _memory import peak_during  # benchmarks/_memory.py
from _report import _call_seconds, interleaved_medians, machine_line, machine_meta, write  # benchmarks/_report.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
try:
    import torch

    from make_train_fixture import TorchGPT
except ImportError:  # torch is optional: only a baseline
    torch = None

MODELS = {
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12, vocab=65, target=1.5),
    "char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=8, vocab=65, target=2.0),
    "small": dict(n_layer=12, n_head=12, n_embd=768, block_size=256, batch=2, vocab=50257, target=2.0),
}


def step_flops(m, n_params):
    tokens = m["batch"] * m["block_size"]
    return 6 * n_params * tokens + 12 * m["n_layer"] * m["block_size"] * m["n_embd"] * tokens


def cpu_seconds(fn):
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def memory_child(name, impl, threads):
    """In a child process: peak MiB of building the optimizer and 3 training steps of ``impl`` on model
    ``name``, over the resident set once the weights exist (printed on the last line)."""
    m = MODELS[name]
    qkv.set_num_threads(threads)
    cfg = GPTConfig(vocab_size=m["vocab"], block_size=m["block_size"], n_layer=m["n_layer"], n_head=m["n_head"],
                    n_embd=m["n_embd"])
    model = GPT(cfg).init_weights(0)
    ids = np.random.default_rng(0).integers(0, m["vocab"], (m["batch"], m["block_size"] + 1))
    x, y = np.ascontiguousarray(ids[:, :-1]), np.ascontiguousarray(ids[:, 1:])
    if impl == "torch":
        torch.set_num_threads(threads)
        tm = TorchGPT(m["vocab"], m["block_size"], m["n_layer"], m["n_head"], m["n_embd"])
        tm.load_qkv(dict(model.named_parameters()))
        del model
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def steps():  # the optimizer is returned so it lives until the last sample
        if impl == "torch":
            topt = tm.adamw(lr=1e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
            for _ in range(3):
                topt.zero_grad(set_to_none=True)
                tm(tx, ty).backward()
                torch.nn.utils.clip_grad_norm_(tm.parameters(), 1.0)
                topt.step()
            return topt
        opt = AdamW(model.named_parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1)
        for _ in range(3):
            _, grads = model.value_and_grad(x, y)
            clip_grad_norm(grads, 1.0)
            opt.step(grads)
        return opt

    peak, before = peak_during(steps)  # every 0.2 ms while the steps run
    print((peak - before) / 2**20)


def peak_memory(name, impl, threads):
    """memory_child in a fresh process; None (and its last error line on stderr) if it fails."""
    res = subprocess.run([sys.executable, __file__, "--memory-child", name, impl, "--threads", str(threads)],
                         capture_output=True, text=True)
    if res.returncode:
        print(f"memory probe of {impl} on {name} failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return float(res.stdout.strip().splitlines()[-1])


def workload(name, m, rng):
    cfg = GPTConfig(vocab_size=m["vocab"], block_size=m["block_size"], n_layer=m["n_layer"], n_head=m["n_head"],
                    n_embd=m["n_embd"])
    model = GPT(cfg).init_weights(0)
    opt = AdamW(model.named_parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1)
    ids = rng.integers(0, m["vocab"], (m["batch"], m["block_size"] + 1))
    x, y = np.ascontiguousarray(ids[:, :-1]), np.ascontiguousarray(ids[:, 1:])

    def qkv_step():
        _, grads = model.value_and_grad(x, y)
        clip_grad_norm(grads, 1.0)
        opt.step(grads)

    impls = {"qkv": qkv_step}
    if torch is not None:
        tm = TorchGPT(m["vocab"], m["block_size"], m["n_layer"], m["n_head"], m["n_embd"])
        tm.load_qkv(dict(model.named_parameters()))
        topt = tm.adamw(lr=1e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            topt.zero_grad(set_to_none=True)
            loss = tm(tx, ty)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tm.parameters(), 1.0)
            topt.step()

        impls["torch"] = torch_step
    label = (f"{name}: {m['n_layer']}L {m['n_head']}H {m['n_embd']}C, T={m['block_size']}, B={m['batch']}, "
             f"V={m['vocab']}")
    return label, impls, step_flops(m, model.num_parameters()), model.num_parameters()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="baby", help="comma-separated: " + ",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results/train_cpu")
    ap.add_argument("--threads", type=int, default=None, help="threads for both (default: qkv's count)")
    ap.add_argument("--cpu-time", action="store_true", help="time steps by process CPU time (use with --threads 1)")
    ap.add_argument("--memory", action="store_true", help="also each implementation's peak memory of training")
    ap.add_argument("--memory-child", nargs=2, metavar=("MODEL", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    threads = args.threads or qkv.get_num_threads()
    if args.memory_child:
        return memory_child(*args.memory_child, threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    qkv.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()[0]
    peak_before = fma_peak(threads, 0.2)
    rows, flops, params = {}, {}, {}
    for name in names:
        label, impls, f, n = workload(name, MODELS[name], rng)
        rows[label], flops[label], params[label] = impls, f, n
    med = interleaved_medians(rows, args.rounds, cpu_seconds if args.cpu_time else _call_seconds)
    memory = {label: {impl: peak_memory(name, impl, threads) for impl in rows[label]}
              for label, name in zip(rows, names)} if args.memory else None
    peak_after = fma_peak(threads, 0.2)
    peak = max(peak_before["gflops"], peak_after["gflops"])
    load_after = os.getloadavg()[0]
    clock = "process CPU time" if args.cpu_time else "wall clock"
    meta = machine_meta(args.rounds, fma_peak_before=peak_before, fma_peak_after=peak_after,
                        load_average=[load_before, load_after], clock=clock)
    lines = [f"# One training step on the CPU ({meta['date']})", "", machine_line(meta), "",
             f"float32 FMA peak on {threads} threads ({peak_before['simd']}): {peak_before['gflops']:.0f} GFLOP/s "
             f"before, {peak_after['gflops']:.0f} after (the larger is the roofline below). Load average "
             f"(1 min) {load_before:.1f} before, {load_after:.1f} after"
             + (": above the CPU count, other jobs shared the cores and every figure is low."
                if max(load_before, load_after) > (os.cpu_count() or 1) else ".")
             + f" Step times by the {clock}.", "",
             "| model | params | implementation | ms/step | GFLOP/s | % of FMA peak | torch / qkv | target |"
             + (" peak MiB |" if memory else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if memory else "")]
    results = {}
    for (label, impls), name in zip(med.items(), names):
        res = {}
        for impl, t in impls.items():
            gf = flops[label] / t / 1e9
            res[impl] = {"seconds": t, "gflops": gf, "peak_fraction": gf / peak,
                         **({"peak_mib": memory[label][impl]} if memory else {})}
        speedup = impls["torch"] / impls["qkv"] if "torch" in impls else None
        target = MODELS[name]["target"]
        results[label] = {"impls": res, "speedup": speedup, "target": target, "flops": flops[label],
                          "params": params[label], "met": None if speedup is None else speedup >= target}
        for impl, r in res.items():
            sp = "" if impl != "qkv" or speedup is None else f"{speedup:.2f}x"
            tg = "" if impl != "qkv" else f">= {target}x: {'yes' if speedup and speedup >= target else 'no'}"
            mem = "" if not memory else (" n/a |" if r["peak_mib"] is None else f" {r['peak_mib']:.0f} |")
            lines.append(f"| {label} | {params[label] / 1e6:.2f}M | {impl} | {r['seconds'] * 1e3:.1f} | "
                         f"{r['gflops']:.1f} | {100 * r['peak_fraction']:.1f}% | {sp} | {tg} |" + mem)
    write(args.out, "\n".join(lines) + "\n", {"meta": meta, "results": results})


if __name__ == "__main__":
    main()
