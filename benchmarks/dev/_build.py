"""Compile a C file of benchmarks/dev into a shared library and load it with ctypes (cached by mtime),
and the timing loop and options the numbered-version scripts (attention_versions.py,
attention_backward_versions.py) share."""

import ctypes
import os
import subprocess
import sysconfig
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.join(REPO, "build", "bench-dev")


def load(source, extra_flags=()):
    """Build HERE/source (gcc -O3 -fopenmp, includes csrc/) unless up to date; return the ctypes.CDLL."""
    src = os.path.join(HERE, source)
    os.makedirs(BUILD, exist_ok=True)
    lib = os.path.join(BUILD, os.path.splitext(source)[0] + sysconfig.get_config_var("SHLIB_SUFFIX"))
    deps = [src] + [os.path.join(REPO, "csrc", f) for f in os.listdir(os.path.join(REPO, "csrc"))]
    if not os.path.exists(lib) or os.path.getmtime(lib) < max(os.path.getmtime(d) for d in deps):
        cmd = ["gcc", "-O3", "-std=gnu11", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC",
               "-I", os.path.join(REPO, "csrc"), *extra_flags, src, "-o", lib]
        subprocess.run(cmd, check=True)
    return ctypes.CDLL(lib)


def read_bandwidth(n_threads, nbytes, reps=20):
    """Measured read bandwidth in GB/s over a buffer of nbytes (best of reps passes)."""
    lib = load("read_bandwidth.c")
    lib.read_bandwidth_gbs.restype = ctypes.c_double
    lib.read_bandwidth_gbs.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int]
    return lib.read_bandwidth_gbs(n_threads, int(nbytes), reps)


def load_attention(prefix, defines):
    """csrc/attention.c compiled with these -D overrides, as a ctypes.CDLL: a one-line translation
    unit HERE/<prefix>_<tag>.c, so each variant gets its own library."""
    tag = "_".join(f"{k}{v}" for k, v in sorted(defines.items())) or "default"
    src = os.path.join(HERE, f"{prefix}_{tag}.c")
    with open(src, "w") as f:
        f.write("".join(f"#define {k} {v}\n" for k, v in defines.items()) + '#include "attention.c"\n')
    try:
        return load(os.path.basename(src))
    finally:
        os.remove(src)


def add_timing_args(ap):
    """--threads, --lengths, --repeat, --quick and --cpu-time; read them back with timing_clock."""
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cpu-time", action="store_true",
                    help="one thread, timed by the thread's CPU time (time.thread_time): on a shared machine this "
                         "measures the kernel, not the scheduler")


def timing_clock(args):
    """Applies --cpu-time (one thread) and --quick (L = 256, 2 repeats) to args; returns the clock."""
    clock = time.perf_counter
    if args.cpu_time:
        args.threads, clock = 1, time.thread_time
    if args.quick:
        args.lengths, args.repeat = [256], 2
    return clock


def time_all(runs, repeat, clock):
    """{name: median seconds} of the calls in runs, after one warm-up each, alternating name by name."""
    ts = {n: [] for n in runs}
    for r in runs.values():
        r()
    for _ in range(repeat):
        for n, r in runs.items():
            t = clock()
            r()
            ts[n].append(clock() - t)
    return {n: float(np.median(t)) for n, t in ts.items()}
