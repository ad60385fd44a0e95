"""Compile a C file of benchmarks/dev into a shared library and load it with ctypes (cached by mtime)."""

import ctypes
import os
import subprocess
import sysconfig

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
