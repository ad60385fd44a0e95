"""Thread-pool defaults, set before qkv loads OpenMP (libgomp) and SciPy's OpenBLAS.

qkv alternates its own OpenMP kernels with SciPy's OpenBLAS GEMMs on the same cores. Both pools
spin after each call by default (libgomp for up to ~300k iterations, OpenBLAS for 2^28 cycles), so
between ops up to 2x the cores' threads fight: an attention followed by a linear went from 0.5 ms
on one thread to ~30 ms on two of two cores. Passive waiting puts idle threads to sleep at once.

Only defaults: a value the user set in the environment is kept. They take effect for libraries
loaded after ``import qkv`` (libgomp through qkv's extensions; SciPy's OpenBLAS unless
scipy.linalg was imported first).
"""

import os

DEFAULTS = {
    "OMP_WAIT_POLICY": "PASSIVE",  # libgomp: sleep when idle instead of spinning
    "OPENBLAS_THREAD_TIMEOUT": "4",  # OpenBLAS: spin 2^4 cycles before sleeping (its minimum)
}

for _name, _value in DEFAULTS.items():
    os.environ.setdefault(_name, _value)
