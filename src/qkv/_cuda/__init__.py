"""The ``cuda`` backend: CUDA C kernels (src/qkv/_cuda/*.cu) loaded with CuPy RawModule.

Only ``available()`` lives here until the kernels land: it says why the backend cannot run
(CuPy missing, no device), so ``qkv.backends()`` and ``qkv info`` can report it. Importing this
module never imports CuPy.
"""

NAME = "cuda"
ARRAY_KIND = "cupy"
DTYPES = ()


def available():
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install 'qkv[cuda]')"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError without a driver
        return False, f"no usable CUDA device ({type(exc).__name__}: {exc})"
    if n == 0:
        return False, "CuPy sees no CUDA device"
    return False, "the CUDA kernels are not built into this version of qkv yet"
