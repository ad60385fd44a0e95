"""``qkv info``: what qkv will run on this machine."""

import json
import platform


def add_parser(sub):
    p = sub.add_parser("info", help="version, backends, SIMD level, threads, BLAS, GPU status")
    p.add_argument("--json", action="store_true", help="print the same facts as JSON")
    return p


def collect():
    """The facts ``qkv info`` prints, as a dict."""
    import numpy as np
    import scipy

    import qkv
    from qkv import _config
    from qkv._cpu import _runtime

    facts = {
        "qkv": qkv.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "backends": qkv.backends(),
        "backend_in_force": qkv.get_backend(),
        "simd": {
            "in_use": _config.simd_name(),
            "cpu_supports": _runtime.SIMD_NAMES[_runtime.cpu_simd_level()],
        },
        "attention_kernels": attention_kernels(),
        "quantized_linear": qkv.quant.kernel_info()[_config.simd_name()],  # bf16/int8 weights (csrc/quant.c)
        "openmp": _runtime.openmp_enabled(),
        "threads": qkv.get_num_threads(),
        "blas": blas_info(),
        "gpu": gpu_info(),
    }
    return facts


def attention_kernels():
    """Which CPU attention path typical calls take now (float32, B=1, 12 heads of 64)."""
    import importlib

    att = importlib.import_module("qkv._cpu.attention")
    q, kv = (1, 12, 1024, 64), (1, 12, 1024, 64)
    return {
        "prefill L=1024": att.kernel_path(q, kv, kv),
        "decode Lq=1, Lk=4096": att.kernel_path((1, 12, 1, 64), (1, 12, 4096, 64), (1, 12, 4096, 64)),
        "float64 L=1024": att.kernel_path(q, kv, kv, dtype="float64"),
    }


def blas_info():
    """The BLAS libraries loaded (SciPy's serves qkv.linear), with their kernel, via threadpoolctl."""
    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's BLAS)
        from threadpoolctl import threadpool_info
    except ImportError as exc:
        return [{"error": str(exc)}]
    return [
        {
            "library": info.get("internal_api"),
            "version": info.get("version"),
            "kernel": info.get("architecture"),
            "threads": info.get("num_threads"),
            "path": info.get("filepath"),
        }
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]


def gpu_info():
    try:
        import cupy
    except ImportError:
        return {"cupy": None, "devices": 0, "note": "CuPy not installed"}
    out = {"cupy": cupy.__version__}
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        out["devices"] = n
        out["names"] = [cupy.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(n)]
    except Exception as exc:
        out["devices"] = 0
        out["note"] = f"{type(exc).__name__}: {exc}"
    return out


def run(args):
    facts = collect()
    if args.json:
        print(json.dumps(facts, indent=2, default=str))
        return 0
    print(f"qkv {facts['qkv']}  (Python {facts['python']}, NumPy {facts['numpy']}, SciPy {facts['scipy']})")
    print(f"machine     {facts['machine']}")
    print("backends")
    for name, b in facts["backends"].items():
        state = "available" if b["available"] else f"unavailable: {b['reason']}"
        print(f"  {name:<6} ({b['arrays']} arrays) {state}")
    print(f"  in force: {facts['backend_in_force']}")
    simd = facts["simd"]
    print(f"SIMD        {simd['in_use']} (CPU supports {simd['cpu_supports']}; cap with QKV_SIMD)")
    print("attention   " + ", ".join(f"{k}: {v}" for k, v in facts["attention_kernels"].items()))
    print(f"quantized   linear with bf16/int8 weights: {facts['quantized_linear']}")
    print(f"threads     {facts['threads']} (OpenMP {'on' if facts['openmp'] else 'off'}; OMP_NUM_THREADS or qkv.set_num_threads)")
    for b in facts["blas"]:
        if "error" in b:
            print(f"BLAS        unknown ({b['error']})")
        else:
            print(f"BLAS        {b['library']} {b['version']}, kernel {b['kernel']}, {b['threads']} threads  [{b['path']}]")
    g = facts["gpu"]
    if g.get("devices"):
        print(f"GPU         CuPy {g['cupy']}: {', '.join(g['names'])}")
    else:
        print(f"GPU         none ({g.get('note', '')})")
    return 0
