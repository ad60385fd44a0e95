"""The one table of CUDA kernels: family -> .cu file -> template instances per dtype.

The runtime (qkv._cuda.loader) and the compile gate (tools/check_kernels.py) both build their
NVRTC programs from this table, with the same source text and options, so a renamed template or
a missing instance fails the gate before it can fail on a GPU. Importing this module never
imports CuPy.
"""

import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))

# dtype name -> the C++ type the kernels are instantiated with
CTYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}
ALL = tuple(CTYPES)
HALF = ("float16", "bfloat16")

# NVRTC options for every RawModule (CuPy adds its include dirs and -arch). No --use_fast_math:
# softmax and masking need exact -inf handling and precise expf.
OPTIONS = ("--std=c++17",)

# Attention tiles; shared-memory sizes below must match the kernels' layouts in attention.cu.
ATTN_MMA_BM, ATTN_MMA_BN, ATTN_MMA_THREADS, ATTN_MMA_DIMS = 64, 64, 128, (64, 128)
ATTN_ROWS_ROWS, ATTN_ROWS_BN, ATTN_ROWS_THREADS, ATTN_ROWS_DMAX = 4, 32, 128, (64, 128, 256)
# Tensor-core backward (attn_bwd_dq_mma / attn_bwd_dkdv_mma): the mma tiles above (64 queries x 64
# keys per dq step, 64 keys per dkdv CTA), query tiles of ATTN_BWD_BQ[D] in dkdv; rowdot: 4 rows a CTA.
ATTN_BWD_BQ, ATTN_BWD_ROWDOT_ROWS = {64: 64, 128: 32}, 4

# rope_rows keeps cos / sin of D/2 angles in shared memory: head dims up to 2 * ROPE_MAX_HALF (rope.cu)
ROPE_MAX_HALF = 256

# SASS the compile gate requires of a template (prefixes of opcodes), when cuobjdump is available:
# the tensor-core kernel must really use mma.sync (HMMA), ldmatrix (LDSM, .trans = MT88) and cp.async.
_MMA_SASS = ("HMMA.16816.F32", "LDSM.16.M88.4", "LDSM.16.MT88.4", "LDGSTS")
SASS_REQUIRED = {"attn_mma": _MMA_SASS, "attn_bwd_dq_mma": _MMA_SASS, "attn_bwd_dkdv_mma": _MMA_SASS}

# family -> (file, [(template, dtypes, integer template arguments (one instance per value))])
FAMILIES = {
    "attention": ("attention.cu", [
        ("attn_mma", HALF, ATTN_MMA_DIMS),
        ("attn_rows", ALL, ATTN_ROWS_DMAX),
        ("attn_combine", ALL, (None,)),
        ("attn_bwd_dq", ALL, ATTN_ROWS_DMAX),
        ("attn_bwd_dkdv", ALL, ATTN_ROWS_DMAX),
        ("attn_bwd_rowdot", HALF, (None,)),
        ("attn_bwd_dq_mma", HALF, ATTN_MMA_DIMS),
        ("attn_bwd_dkdv_mma", HALF, ATTN_MMA_DIMS),
    ]),
    "softmax": ("softmax.cu", [("softmax_rows", ALL, (None,)), ("softmax_bwd", ALL, (None,)),
                               ("cross_entropy_rows", ALL, (None,))]),
    "layernorm": ("layernorm.cu", [("layernorm_rows", ALL, (None,)), ("layernorm_bwd", ALL, (None,)),
                                   ("sum_partials", ALL, (None,)), ("rmsnorm_rows", ALL, (None,)),
                                   ("rmsnorm_bwd", ALL, (None,))]),
    "activation": ("activation.cu", [("bias_act", ALL, (None,)), ("act_bwd", ALL, (None,)),
                                     ("act_bwd_cols", ALL, (None,)), ("sum_partials", ALL, (None,)),
                                     ("swiglu", ALL, (None,)), ("swiglu_bwd", ALL, (None,))]),
    "rope": ("rope.cu", [("rope_rows", ALL, (None,))]),
    "embedding": ("embedding.cu", [("embedding_gather", ALL, (None,)), ("embedding_bwd", ALL, (None,))]),
    "optim": ("optim.cu", [("adamw", ALL, (None,))]),
}

# Row reductions of the backward kernels (layer norm dweight/dbias, linear dbias): rows go in
# chunks of at least ROW_CHUNK_MIN_ROWS, at most ROW_CHUNKS_MAX chunks, a function of R only, so
# the order of every sum is fixed by the shape (see sum_partials in common.cuh).
ROW_CHUNKS_MAX, ROW_CHUNK_MIN_ROWS = 256, 8


def row_chunks(R):
    """(number of chunks, rows per chunk) for a row reduction over R rows."""
    n = max(1, min(ROW_CHUNKS_MAX, -(-R // ROW_CHUNK_MIN_ROWS)))
    per = -(-R // n)
    return -(-R // per), per


def expr(template, dtype, param=None):
    """The name expression of one instance, e.g. ``attn_mma<__half, 128>``."""
    args = CTYPES[dtype] if param is None else f"{CTYPES[dtype]}, {param}"
    return f"{template}<{args}>"


def name_expressions(family):
    """Every instance of a family, in table order."""
    _, templates = FAMILIES[family]
    return [expr(t, dt, p) for t, dtypes, params in templates for dt in dtypes for p in params]


def source_path(family):
    return os.path.join(HERE, FAMILIES[family][0])


_INCLUDE = re.compile(r'^#include "([\w.]+)"\s*$', re.M)


def source(family):
    """The program text NVRTC compiles: the .cu file with our local headers inlined.

    Inlining (instead of -I) keeps CuPy's kernel cache honest: its key is the source text, so an
    edit to common.cuh recompiles every family.
    """
    with open(source_path(family)) as f:
        text = f.read()

    def inline(m):
        with open(os.path.join(HERE, m.group(1))) as h:
            return h.read().replace("#pragma once", "")

    return _INCLUDE.sub(inline, text)


def archs(family):
    """Architectures the gate compiles a family for: sm_80, sm_90, plus any `// qkv-archs:` extras."""
    extra = re.findall(r"//\s*qkv-archs:\s*([\w ,]+)", open(source_path(family)).read())
    out = ["sm_80", "sm_90"]
    for line in extra:
        out += [a.strip() for a in line.replace(",", " ").split() if a.strip() not in out]
    return out


def attn_mma_smem(D, itemsize=2):
    """Dynamic shared memory of attn_mma<T, D>: Q tile + double-buffered K and V tiles (rows padded
    by 8), then a float32 P tile per warp for tiles whose V holds NaN/Inf."""
    return (ATTN_MMA_BM + 4 * ATTN_MMA_BN) * (D + 8) * itemsize + ATTN_MMA_BM * ATTN_MMA_BN * 4


def attn_bwd_dq_mma_smem(D, itemsize=2):
    """Dynamic shared memory of attn_bwd_dq_mma<T, D>: Q and dO tiles + double-buffered K and V
    tiles (rows padded by 8), then a float32 dS tile per warp for tiles whose K holds NaN/Inf."""
    return (2 * ATTN_MMA_BM + 4 * ATTN_MMA_BN) * (D + 8) * itemsize + ATTN_MMA_BM * ATTN_MMA_BN * 4


def attn_bwd_dkdv_mma_smem(D, itemsize=2):
    """Dynamic shared memory of attn_bwd_dkdv_mma<T, D>: K and V tiles + double-buffered Q and dO
    tiles of ATTN_BWD_BQ[D] queries (rows padded by 8), then double-buffered lse and D_i (float32)."""
    bq = ATTN_BWD_BQ[D]
    return (2 * ATTN_MMA_BN + 4 * bq) * (D + 8) * itemsize + 4 * bq * 4


def attn_rows_smem(dmax):
    """Dynamic shared memory of attn_rows<T, DMAX>: K (odd stride), V, Q rows and P, all float32."""
    return 4 * (ATTN_ROWS_BN * (dmax + 1) + ATTN_ROWS_BN * dmax + ATTN_ROWS_ROWS * dmax + ATTN_ROWS_ROWS * ATTN_ROWS_BN)


def dynamic_smem(name):
    """Dynamic shared memory a name expression is launched with (0 for static-only kernels)."""
    m = re.fullmatch(r"(\w+)<(.+?)(?:, (\d+))?>", name)
    template, ctype, param = m.group(1), m.group(2), m.group(3)
    if template == "attn_mma":
        return attn_mma_smem(int(param), 4 if ctype == "float" else 2)
    if template == "attn_rows":
        return attn_rows_smem(int(param))
    if template == "attn_bwd_dq_mma":
        return attn_bwd_dq_mma_smem(int(param))
    if template == "attn_bwd_dkdv_mma":
        return attn_bwd_dkdv_mma_smem(int(param))
    return 0
