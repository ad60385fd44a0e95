"""Build the compiled CPU backend of qkv.

One Extension per kernel family (src/qkv/_cpu/_<family>.pyx), each linked with the pure-C kernels it
needs from csrc/. Decisions live here, once:

- COMPILER_DIRECTIVES: the Cython directives for every .pyx. QKV_DEBUG_CYTHON=1 turns on bounds
  checking (and keeps asserts), for a debug run of the test suite.
- OpenMP: probed by compiling *and running* a tiny program. QKV_NO_OPENMP=1 skips it. Without
  OpenMP the kernels run single-threaded and the build says so loudly.
- No -march=native: the wheel is portable. SIMD paths (AVX-512, AVX2, scalar) are compiled side by
  side with `#pragma GCC target` and picked at run time (csrc/qkv_common.h).
- -fno-trapping-math lets GCC if-convert the branch-free selects in csrc/qkv_math.h (AVX2 has no
  masked ops); qkv never relies on floating-point exceptions. No -ffast-math: NaN/Inf semantics stay.
- QKV_SANITIZE=1 builds with AddressSanitizer + UBSan (for the hardening CI step).
"""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("QKV_DEBUG_CYTHON", "0") == "1"
SANITIZE = os.environ.get("QKV_SANITIZE", "0") == "1"

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "nonecheck": False,
    "embedsignature": True,
}

# Extension table: module name -> the C sources it links. Headers live in csrc/.
EXTENSIONS = {
    "qkv._cpu._runtime": ["csrc/fma_peak.c"],
    "qkv._cpu._softmax": ["csrc/softmax.c"],
    "qkv._cpu._layernorm": ["csrc/layernorm.c"],
    "qkv._cpu._rmsnorm": ["csrc/rmsnorm.c"],
    "qkv._cpu._rope": ["csrc/rope.c"],
    "qkv._cpu._activation": ["csrc/activation.c"],
    "qkv._cpu._linear": ["csrc/activation.c"],
    "qkv._cpu._attention": ["csrc/attention.c"],
    "qkv._cpu._embedding": ["csrc/embedding.c"],
    "qkv._cpu._optim": ["csrc/optim.c"],
    "qkv._cpu._quant": ["csrc/quant.c", "csrc/activation.c"],
}


def _compiler():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()


def openmp_flags():
    """Compile and run a small OpenMP program; return (cflags, ldflags) or ([], [])."""
    if os.environ.get("QKV_NO_OPENMP", "0") == "1":
        print("qkv: QKV_NO_OPENMP=1, building without OpenMP", file=sys.stderr)
        return [], []
    code = textwrap.dedent(
        """
        #include <omp.h>
        #include <stdio.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            printf("%d\\n", n > 0);
            return 0;
        }
        """
    )
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(code)
        try:
            subprocess.run(_compiler() + ["-fopenmp", src, "-o", exe], check=True, capture_output=True)
            out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout.strip()
            if out == "1":
                return ["-fopenmp"], ["-fopenmp"]
        except (OSError, subprocess.CalledProcessError):
            pass
    print(
        "\n" + "*" * 72 + "\nqkv WARNING: OpenMP not found; kernels will run on one thread.\n"
        "Install a compiler with OpenMP support (gcc, or clang + libomp) for multithreading.\n"
        + "*" * 72 + "\n",
        file=sys.stderr,
    )
    return [], []


def extensions():
    omp_c, omp_l = openmp_flags()
    cflags = ["-O3", "-std=c11", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wno-unused-function",
              "-Wno-unknown-pragmas"] + omp_c
    lflags = list(omp_l)
    if SANITIZE:
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        cflags = [f for f in cflags if f != "-O3"] + ["-O1", "-g"] + san
        lflags += san
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    exts = []
    for name, csources in EXTENSIONS.items():
        pyx = "src/" + name.replace(".", "/") + ".pyx"
        exts.append(
            Extension(
                name,
                sources=[pyx] + csources,
                include_dirs=["csrc", np.get_include()],
                depends=sorted(glob.glob("csrc/*.h") + glob.glob("csrc/*.inc")),
                define_macros=macros,
                extra_compile_args=cflags,
                extra_link_args=lflags,
            )
        )
    return cythonize(exts, compiler_directives=COMPILER_DIRECTIVES, quiet=True)


if shutil.which("gcc") is None and "CC" not in os.environ:  # pragma: no cover
    print("qkv: no gcc on PATH; using the default compiler", file=sys.stderr)

setup(ext_modules=extensions())
