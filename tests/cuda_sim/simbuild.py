"""Build the real qkv CUDA kernels for the CPU and call them from NumPy.

``build(src_dir)`` writes a launcher that includes cuda_cpu_fiber.h and then every .cu file of
qkv._cuda.kernels (from ``src_dir``, by default the package's own directory), plus a registry
that maps each name expression of the table to its template instance. g++ turns it into a shared
library. ``SimRuntime`` has the interface qkv._cuda uses for CuPy (``xp``, ``launch``,
``sm_count``, ``data_ptr``) with NumPy arrays, so the backend's own argument plumbing runs too:
arguments are packed exactly as cuLaunchKernel's ``kernelParams`` (an array of pointers to each
argument), and the launcher unpacks them with the kernel's own parameter types.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "src"))
from qkv._cuda import kernels  # noqa: E402


def cuda_include():
    """A directory holding cuda_fp16.h / cuda_bf16.h, or None."""
    cands = [os.path.join(os.environ[v], "include") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    cands += ["/usr/local/cuda/include"]
    try:
        import nvidia  # pip wheels: nvidia/cu13/include, nvidia/cuda_runtime/include

        for base in nvidia.__path__:
            cands += [os.path.join(base, "cu13", "include"), os.path.join(base, "cuda_runtime", "include")]
    except ImportError:
        pass
    for d in cands:
        if os.path.exists(os.path.join(d, "cuda_fp16.h")) and os.path.exists(os.path.join(d, "cuda_bf16.h")):
            return d
    return None


def missing_tools():
    """Why the harness cannot run here (None if it can)."""
    if shutil.which("g++") is None:
        return "g++ not found"
    if cuda_include() is None:
        return "CUDA headers (cuda_fp16.h, cuda_bf16.h) not found; set CUDA_HOME or pip install nvidia-cuda-runtime"
    return None


_PRELUDE = r"""
#include <type_traits>
#include <utility>
template <typename... A, size_t... I>
static void qkv_sim_call(void (*k)(A...), void** a, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(a[I])...);
}
template <typename... A>
static std::function<void()> qkv_sim_bind(void (*k)(A...), void** a) {
    return [k, a] { qkv_sim_call(k, a, std::index_sequence_for<A...>{}); };
}
struct QkvSimEntry { const char* name; std::function<void()> (*make)(void**); };
"""

_LAUNCH = r"""
extern "C" int qkv_sim_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                              unsigned bz, unsigned long long smem, void** args) {
    for (const auto& e : qkv_sim_entries) {
        if (std::strcmp(e.name, name) == 0) {
            cpusim::launch({gx, gy, gz}, {bx, by, bz}, smem, e.make(args));
            return 0;
        }
    }
    return 1;
}
extern "C" void qkv_sim_set_policy(int p, int eager) { cpusim::policy = p; cpusim::cp_async_eager = eager; }
"""


# test-only kernels built next to the package's: (file in tests/cuda_sim, name expressions)
PROBES = [("mma_probe.cu", ["mma_probe<__half>", "mma_probe<__nv_bfloat16>"])]


def probe_source(file):
    """A probe's text with common.cuh inlined, as NVRTC gets it (test_cuda_gpu.py)."""
    text = open(os.path.join(HERE, file)).read()
    common = open(os.path.join(kernels.HERE, "common.cuh")).read().replace("#pragma once", "")
    return text.replace('#include "common.cuh"', common)


def launcher_source(src_dir):
    lines = ['#include "cuda_cpu_fiber.h"']
    lines += [f'#include "{os.path.join(src_dir, f)}"' for f, _ in kernels.FAMILIES.values()]
    lines += [f'#include "{os.path.join(HERE, f)}"' for f, _ in PROBES]
    lines.append(_PRELUDE)
    lines.append("static const QkvSimEntry qkv_sim_entries[] = {")
    for fam in kernels.FAMILIES:
        for ne in kernels.name_expressions(fam):
            lines.append(f'    {{"{ne}", [](void** a) {{ return qkv_sim_bind(&{ne}, a); }}}},')
    for _, names in PROBES:
        for ne in names:
            lines.append(f'    {{"{ne}", [](void** a) {{ return qkv_sim_bind(&{ne}, a); }}}},')
    lines.append("};")
    lines.append(_LAUNCH)
    return "\n".join(lines)


def build(src_dir=None, out_dir=None, extra_flags=()):
    """Compile the kernels in ``src_dir`` (default: the package's) into a .so; returns its path.

    Cached by the hash of every input, so unchanged sources are not rebuilt.
    """
    src_dir = os.path.abspath(src_dir or kernels.HERE)
    out_dir = out_dir or os.path.join(tempfile.gettempdir(), f"qkv_cuda_sim_{os.getuid()}")
    os.makedirs(out_dir, exist_ok=True)
    src = launcher_source(src_dir)
    h = hashlib.sha256(src.encode())
    paths = [os.path.join(src_dir, n) for n in sorted(os.listdir(src_dir))]
    paths += [os.path.join(HERE, "cuda_cpu_fiber.h")] + [os.path.join(HERE, f) for f, _ in PROBES]
    for p in paths:
        if p.endswith((".cu", ".cuh", ".h")):
            h.update(open(p, "rb").read())
    h.update(" ".join(extra_flags).encode())
    tag = h.hexdigest()[:16]
    so = os.path.join(out_dir, f"qkv_sim_{tag}.so")
    if os.path.exists(so):
        return so
    cpp = os.path.join(out_dir, f"qkv_sim_{tag}.cpp")
    with open(cpp, "w") as f:
        f.write(src)
    cmd = ["g++", "-std=c++20", "-O1", "-g0", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
           "-Wno-unused-parameter", "-Wno-clobbered", "-Wno-unknown-pragmas",  # #pragma unroll is nvcc's
           "-isystem", cuda_include(), "-I", HERE, "-I", src_dir, *extra_flags, cpp, "-o", so + ".tmp"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"g++ failed ({' '.join(cmd)}):\n{r.stderr[-6000:]}")
    os.replace(so + ".tmp", so)
    return so


_CTYPE = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
          np.dtype(np.float32): ctypes.c_float}


class SimRuntime:
    """qkv._cuda's runtime interface on NumPy arrays, launching the CPU-compiled kernels."""

    xp = np

    POLICIES = {"round_robin": 0, "low_first": 1, "high_first": 2}

    def __init__(self, so_path, sms=4, policy="round_robin"):
        self.lib = ctypes.CDLL(so_path)
        self.set_policy(policy)
        self.lib.qkv_sim_launch.restype = ctypes.c_int
        self.lib.qkv_sim_launch.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 6 + [ctypes.c_ulonglong,
                                                                                      ctypes.POINTER(ctypes.c_void_p)]
        self.sms = sms
        self.launches = []  # (family, name, grid, block, smem) of every launch, for the tests

    def set_policy(self, name, eager=False):
        """How fibers are scheduled ("round_robin", "low_first", "high_first") and whether cp.async
        copies land at issue (eager) or at the wait (see cuda_cpu_fiber.h)."""
        self.lib.qkv_sim_set_policy(self.POLICIES[name], int(eager))

    def sm_count(self):
        return self.sms

    def data_ptr(self, a):
        return a.ctypes.data

    def launch(self, family, name, grid, block, args, smem=0):
        assert family == "probe" or name in kernels.name_expressions(family), (family, name)
        holders = []
        for a in args:
            if a is None:
                holders.append(ctypes.c_void_p(0))
            elif isinstance(a, np.ndarray):
                holders.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.generic) and a.dtype in _CTYPE:
                holders.append(_CTYPE[a.dtype](a.item()))
            else:
                raise TypeError(f"{name}: kernel arguments must be arrays, None or typed NumPy scalars, got {a!r}")
        params = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
        g = tuple(grid) + (1,) * (3 - len(grid))
        b = tuple(block) + (1,) * (3 - len(block))
        self.launches.append((family, name, g, b, smem))
        rc = self.lib.qkv_sim_launch(name.encode(), *g, *b, smem, params)
        if rc:
            raise KeyError(f"{name} is not in the CPU launcher")
