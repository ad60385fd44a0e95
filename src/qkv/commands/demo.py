"""``qkv demo``: the main job in one command — qkv's kernels against the NumPy reference, timed
side by side on transformer-sized inputs, with the largest error against the oracle."""

import time

import numpy as np


def add_parser(sub):
    p = sub.add_parser("demo", help="time qkv's kernels against the NumPy reference side by side")
    p.add_argument("--repeat", type=int, default=5, help="timed repeats per kernel (best is shown)")
    return p


def best_time(fn, repeat):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def workloads(rng):
    """(name, call(qkv_module)) pairs on GPT-2-small-sized inputs."""
    import qkv

    x = rng.standard_normal((512, 768)).astype(np.float32)
    w1 = (rng.standard_normal((768, 3072)) / 28).astype(np.float32)
    b1 = np.zeros(3072, np.float32)
    g = np.ones(768, np.float32)
    h = x @ w1  # (512, 3072) pre-activation
    s = rng.standard_normal((12, 512, 512)).astype(np.float32)
    pad = np.arange(512) < 480
    q = rng.standard_normal((1, 12, 512, 64)).astype(np.float32)
    out = [
        ("softmax causal+mask [12,512,512]", lambda: qkv.softmax(s, mask=pad, causal=True, scale=0.125)),
        ("layer_norm [512,768]", lambda: qkv.layer_norm(x, g, g)),
        ("gelu tanh [512,3072]", lambda: qkv.gelu(h)),
        ("linear+gelu [512,768]x[768,3072]", lambda: qkv.linear(x, w1, b1, "gelu_tanh")),
        ("attention causal B1 H12 L512 D64", lambda: qkv.attention(q, q, q, causal=True)),
    ]
    return out


def run(args):
    import qkv

    rng = np.random.default_rng(0)
    print(f"qkv {qkv.__version__}: cpu backend vs the NumPy reference, float32, {qkv.get_num_threads()} threads\n")
    print(f"{'kernel':<36} {'qkv cpu':>10} {'numpy ref':>10} {'speed-up':>9} {'max |err|':>10}")
    for name, call in workloads(rng):
        with qkv.use_backend("cpu"):
            t_cpu = best_time(call, args.repeat)
            got = call()
        with qkv.use_backend("numpy"):
            t_ref = best_time(call, max(1, args.repeat // 2))
            want = call()
        err = float(np.max(np.abs(got.astype(np.float64) - want)))
        print(f"{name:<36} {t_cpu * 1e3:>8.2f}ms {t_ref * 1e3:>8.2f}ms {t_ref / t_cpu:>8.1f}x {err:>10.2e}")
    return 0
