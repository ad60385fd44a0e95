"""Backend registry and dispatch: which implementation runs a call.

Backends:
- ``cpu``   compiled Cython/C kernels (qkv._cpu), NumPy arrays;
- ``numpy`` the NumPy reference (qkv._reference): the oracle in tests, always available;
- ``cuda``  CUDA C kernels through CuPy RawModule (qkv._cuda), CuPy arrays.

The default, ``"auto"``, picks by array type: NumPy -> ``cpu``, CuPy -> ``cuda``. An explicit choice
(``set_backend`` globally, ``use_backend`` in a ``with`` block, per thread/task) must match the
arrays' device: qkv never copies between host and device behind your back. Mixing NumPy and CuPy
arrays in one call is a TypeError. ``import qkv`` never imports CuPy or touches a GPU.
"""

import contextlib
import contextvars
import importlib

from numpy import ndarray as _ndarray

_MODULES = {"cpu": "qkv._cpu", "numpy": "qkv._reference", "cuda": "qkv._cuda"}
_AUTO_FOR_KIND = {"numpy": "cpu", "cupy": "cuda"}
_global = "auto"
_override = contextvars.ContextVar("qkv_backend", default=None)
_ready = {}  # cpu and numpy, once imported: they can always run (every op call asks; cuda is asked each time)


class BackendUnavailable(RuntimeError):
    """A backend was asked for but cannot run here; the message says why."""


def _check_name(name, allow_auto=True):
    names = tuple(_MODULES) + (("auto",) if allow_auto else ())
    if name not in names:
        raise ValueError(f"unknown backend {name!r}; choose one of {names}")


def _module(name):
    """Import a backend module and make sure it can run; BackendUnavailable otherwise."""
    mod = _ready.get(name)
    if mod is not None:
        return mod
    try:
        mod = importlib.import_module(_MODULES[name])
    except ImportError as exc:
        raise BackendUnavailable(f"backend {name!r} cannot be imported: {exc}") from exc
    ok, reason = mod.available()
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {reason}")
    if name != "cuda":
        _ready[name] = mod
    return mod


def backends():
    """Every backend with whether it can run here and, if not, why.

    Returns ``{name: {"available": bool, "reason": str | None, "arrays": "numpy" | "cupy"}}``.
    """
    out = {}
    for name, modname in _MODULES.items():
        try:
            mod = importlib.import_module(modname)
            ok, reason = mod.available()
            kind = mod.ARRAY_KIND
        except ImportError as exc:
            ok, reason, kind = False, f"cannot be imported: {exc}", "?"
        out[name] = {"available": ok, "reason": None if ok else reason, "arrays": kind}
    return out


def set_backend(name):
    """Set the global backend: ``"auto"`` (by array type), ``"cpu"``, ``"numpy"`` or ``"cuda"``."""
    global _global
    _check_name(name)
    if name != "auto":
        _module(name)
    _global = name


def get_backend():
    """The backend in force here: the innermost ``use_backend``, else the global one."""
    return _override.get() or _global


@contextlib.contextmanager
def use_backend(name):
    """Run a ``with`` block on one backend (``"auto"`` restores dispatch by array type)."""
    _check_name(name)
    if name != "auto":
        _module(name)
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)


def array_kind(x):
    """``"numpy"`` or ``"cupy"`` for an array, None for anything else."""
    t = type(x)
    if t is _ndarray:
        return "numpy"
    if t.__module__.startswith("numpy"):
        return "numpy"
    if t.__module__.startswith("cupy"):
        return "cupy"
    return None


def select(op, named_arrays):
    """The backend module for a call of ``op`` on ``named_arrays`` ({argument: array or None})."""
    kinds = {}
    for name, a in named_arrays.items():
        if a is None:
            continue
        kind = array_kind(a)
        if kind is None:
            raise TypeError(f"{op}: {name} must be a NumPy or CuPy array, got {type(a).__name__}")
        kinds.setdefault(kind, name)
    if len(kinds) > 1:
        raise TypeError(
            f"{op}: arrays live on different devices ({kinds['numpy']} is NumPy, {kinds['cupy']} is CuPy); "
            "move them explicitly (cupy.asarray / cupy.asnumpy), qkv never copies silently"
        )
    kind = next(iter(kinds), "numpy")
    name = get_backend()
    if name == "auto":
        name = _AUTO_FOR_KIND[kind]
    mod = _module(name)
    if mod.ARRAY_KIND != kind:
        raise TypeError(
            f"{op}: backend {name!r} works on {mod.ARRAY_KIND} arrays but got {kind} arrays; "
            "move the arrays explicitly or pick a matching backend"
        )
    return mod
