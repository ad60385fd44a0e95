"""Run-time settings (threads, SIMD level) as the rest of qkv reads them: qkv.get_num_threads and
qkv.set_num_threads, `qkv info`, the tests' SIMD cap. The state and the code live in
qkv._cpu._config, their one owner (the CPU backend's kernels are what they configure); this module
only re-exports it, and qkv._cpu never imports it.
"""

from qkv._cpu._config import (  # noqa: F401
    SIMD_NAMES,
    get_num_threads,
    set_num_threads,
    set_simd_level,
    simd_level,
    simd_name,
)
