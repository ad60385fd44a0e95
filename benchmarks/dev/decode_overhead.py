"""Greedy decode's per-token time outside the GEMM kernels: the checked public ops at every call
against the validated-once path (qkv._ops.forward_kernels), side by side in one process.

    taskset -c 1 env QKV_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        python benchmarks/dev/decode_overhead.py [--runs gpt2:f32,gpt2:int8,smollm:f32] [--rounds 5]

Random weights (GPT-2 small: GPT(GPTConfig()).init_weights(0); SmolLM-135M's shape as
benchmarks/llama_cpu.py builds it), a 32-token prompt. A token's time is (generate 33 - generate 1)
/ 32 in process CPU time (robust to other processes on a shared machine; pin one thread). The
linear kernels' share is the process CPU time inside them (linear_rows, as qkv._cpu and
qkv._cpu.trusted call it, and the quantized kernels, timed per call); "other" is the rest: Python, the small kernels (norms, rope,
attention), and the cache refills after each weight stream. "checked" runs every op of the forward
through qkv.<op> (what the layers did before forward_kernels), "fast" the default path. Rounds
alternate the two; medians.
"""

import argparse
import statistics
import sys
import time

import numpy as np

import qkv  # noqa: F401
import qkv._cpu
import qkv._cpu._linear
import qkv._cpu._quant
import qkv._cpu.trusted
from qkv import _ops
from qkv.nn import GPT, GPTConfig, Llama, LlamaConfig

PROMPT, NEW = 32, 32
_kernel_seconds = [0.0]


def _timed(kernel):
    def call(*args):
        t = time.process_time()
        kernel(*args)
        _kernel_seconds[0] += time.process_time() - t
    return call


def instrument():
    """Time every call of the linear kernels, wherever qkv calls them from."""
    qkv._cpu.linear_rows = _timed(qkv._cpu._linear.linear_rows)  # the checked path's
    for kernels in qkv._cpu.trusted._BY_DTYPE.values():  # the fast path's (dtype specialisations)
        kernels["linear_rows"] = _timed(kernels["linear_rows"])
    qkv._cpu.trusted._cache.clear()
    for name in ("qlinear_q8_rows", "qlinear_bf16_rows"):  # qkv.quant imports them at each call
        setattr(qkv._cpu._quant, name, _timed(getattr(qkv._cpu._quant, name)))


def build(name):
    if name == "gpt2":
        return GPT(GPTConfig()).init_weights(0)
    model = Llama(LlamaConfig.smollm_135m())
    rng = np.random.default_rng(0)
    for _, p in model.named_parameters():
        p[...] = rng.standard_normal(p.shape, dtype=np.float32) * 0.02
    return model


def per_token(model, prompt, checked):
    """(ms/token, linear-kernel ms/token) of one (33, 1) pair of generate calls."""
    real = _ops.forward_kernels
    if checked:
        _ops.forward_kernels = lambda x: _ops.PUBLIC_OPS
    try:
        out = []
        for n in (NEW + 1, 1):
            _kernel_seconds[0] = 0.0
            t = time.process_time()
            model.generate(prompt, n, top_k=1, eos_token_id=None)
            out.append((time.process_time() - t, _kernel_seconds[0]))
    finally:
        _ops.forward_kernels = real
    (t_long, k_long), (t_short, k_short) = out
    return (t_long - t_short) / NEW * 1e3, (k_long - k_short) / NEW * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="gpt2:f32,gpt2:int8,smollm:f32",
                    help="model:format pairs (gpt2 or smollm; f32, bf16 or int8: the quantized kernels have no "
                         "SwiGLU epilogue, so smollm runs f32 only)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    instrument()
    print(f"threads {qkv.get_num_threads()}; ms/token: total, in the linear kernels, other (median of {args.rounds})")
    for name, fmt in (run.split(":") for run in args.runs.split(",")):
        model = build(name)
        if fmt != "f32":
            model.quantize(fmt)
        prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(1, PROMPT))
        per_token(model, prompt, False)  # warm up: buffers, caches, the BLAS
        runs = {"checked": [], "fast": []}
        for _ in range(args.rounds):
            for path in runs:
                runs[path].append(per_token(model, prompt, path == "checked"))
        other = {}
        for path, rs in runs.items():
            total = statistics.median(t for t, _ in rs)
            kern = statistics.median(k for _, k in rs)
            other[path] = statistics.median(t - k for t, k in rs)
            print(f"{name:7s} {fmt:5s} {path:8s} total {total:7.2f}  linear {kern:7.2f}  other {other[path]:6.2f}")
        print(f"{name:7s} {fmt:5s} other: fast / checked = {other['fast'] / other['checked']:.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
