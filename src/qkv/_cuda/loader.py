"""Lazy CuPy RawModules, one per kernel family, compiled once per device and cached.

``function(family, name)`` returns the ``cupy.RawKernel`` for one name expression of the table in
qkv._cuda.kernels. The first call on a device compiles the family's whole program through NVRTC
(every instance at once, so later dtypes cost nothing); CuPy's on-disk cache makes later
processes start fast.
"""

import threading

from qkv._cuda import kernels

_lock = threading.Lock()
_modules = {}    # (device id, family) -> cupy.RawModule
_functions = {}  # (device id, name, dynamic smem opt-in) -> cupy.RawKernel


def module(family):
    import cupy

    key = (cupy.cuda.Device().id, family)
    mod = _modules.get(key)
    if mod is None:
        with _lock:
            mod = _modules.get(key)
            if mod is None:
                mod = cupy.RawModule(code=kernels.source(family), options=kernels.OPTIONS,
                                     name_expressions=kernels.name_expressions(family))
                mod.compile()
                _modules[key] = mod
    return mod


def function(family, name, dynamic_smem=0):
    """The kernel ``name`` of ``family``; opts it into ``dynamic_smem`` bytes when above 48 KiB."""
    import cupy

    key = (cupy.cuda.Device().id, name, dynamic_smem > 48 * 1024)
    fn = _functions.get(key)
    if fn is None:
        fn = module(family).get_function(name)
        if dynamic_smem > 48 * 1024:
            fn.max_dynamic_shared_size_bytes = max(int(dynamic_smem), 0)
        _functions[key] = fn
    elif dynamic_smem > 48 * 1024 and fn.max_dynamic_shared_size_bytes < dynamic_smem:
        fn.max_dynamic_shared_size_bytes = int(dynamic_smem)
    return fn


def warm_up():
    """Compile every family on the current device (``qkv info`` / tests call this to surface errors early)."""
    for family in kernels.FAMILIES:
        module(family)
