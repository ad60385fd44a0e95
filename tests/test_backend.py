"""Backend registry and dispatch: set_backend / use_backend / backends(), array types, no silent copies."""

import subprocess
import sys
import threading

import numpy as np
import pytest

import qkv
from qkv import _backend


class FakeCupyArray:
    """Stands in for a cupy.ndarray in dispatch tests (only its type's module is looked at)."""

    __module__ = "cupy._core.core"
    dtype = np.dtype(np.float32)
    shape = (2, 2)
    ndim = 2


def test_backends_report():
    info = qkv.backends()
    assert set(info) == {"cpu", "numpy", "cuda"}
    assert info["cpu"]["available"] and info["numpy"]["available"]
    assert info["cpu"]["arrays"] == "numpy" and info["cuda"]["arrays"] == "cupy"
    if not info["cuda"]["available"]:
        assert info["cuda"]["reason"]


def test_default_is_auto_and_numpy_goes_to_cpu():
    assert qkv.get_backend() == "auto"
    x = np.zeros((2, 3), np.float32)
    assert _backend.select("softmax", {"x": x}).NAME == "cpu"


def test_use_backend_nests_and_restores():
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    with qkv.use_backend("numpy"):
        assert qkv.get_backend() == "numpy"
        with qkv.use_backend("cpu"):
            assert qkv.get_backend() == "cpu"
            a = qkv.softmax(x)
        assert qkv.get_backend() == "numpy"
        b = qkv.softmax(x)
    assert qkv.get_backend() == "auto"
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_use_backend_is_per_thread():
    seen = {}
    ready = threading.Event()
    done = threading.Event()

    def other():
        ready.wait()
        seen["other"] = qkv.get_backend()
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with qkv.use_backend("numpy"):
        ready.set()
        done.wait()
    t.join()
    assert seen["other"] == "auto"


def test_set_backend_global():
    try:
        qkv.set_backend("numpy")
        assert qkv.get_backend() == "numpy"
    finally:
        qkv.set_backend("auto")
    assert qkv.get_backend() == "auto"


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        qkv.set_backend("tpu")
    with pytest.raises(ValueError, match="unknown backend"):
        with qkv.use_backend("gpu"):
            pass


def test_cuda_unavailable_says_why():
    if qkv.backends()["cuda"]["available"]:
        pytest.skip("a CUDA device is present")
    with pytest.raises(qkv.BackendUnavailable, match="cuda"):
        qkv.set_backend("cuda")
    assert qkv.get_backend() == "auto"


def test_mixing_numpy_and_cupy_is_a_type_error():
    x = np.zeros((2, 2), np.float32)
    with pytest.raises(TypeError, match="different devices"):
        _backend.select("softmax", {"x": x, "mask": FakeCupyArray()})


def test_numpy_arrays_on_cuda_backend_never_copied():
    x = np.zeros((2, 2), np.float32)
    try:
        _backend._module("cuda")
    except qkv.BackendUnavailable:
        with pytest.raises(qkv.BackendUnavailable):
            with qkv.use_backend("cuda"):
                pass
        return
    with qkv.use_backend("cuda"), pytest.raises(TypeError, match="cupy"):
        qkv.softmax(x)


def test_non_arrays_rejected():
    with pytest.raises(TypeError, match="x must be a NumPy or CuPy array"):
        qkv.softmax([[1.0, 2.0]])


def test_import_does_not_import_cupy():
    code = "import sys, qkv; qkv.softmax(__import__('numpy').ones((2,2))); print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
