"""Threads: OMP_NUM_THREADS honoured, set_num_threads, bit-identical results for 1 and 2 threads,
and concurrent calls from Python threads agreeing with serial ones."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import qkv


def _ops(rng):
    x = rng.standard_normal((64, 513)).astype(np.float32)
    mask = rng.random((64, 513)) > 0.2
    w = rng.standard_normal((513, 200)).astype(np.float32)
    b = rng.standard_normal(200).astype(np.float32)
    g = rng.standard_normal(513).astype(np.float32)
    return [
        lambda: qkv.softmax(x, mask=mask, causal=True),
        lambda: qkv.layer_norm(x, g, g),
        lambda: qkv.gelu(x),
        lambda: qkv.gelu(x, "none"),
        lambda: qkv.linear(x, w, b, "gelu_tanh"),
    ]


def test_omp_num_threads_is_honoured():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code = "import qkv; print(qkv.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_set_num_threads_validates():
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError):
            qkv.set_num_threads(bad)


def test_one_and_two_threads_bit_identical():
    ops = _ops(np.random.default_rng(0))
    try:
        qkv.set_num_threads(1)
        assert qkv.get_num_threads() == 1
        one = [op() for op in ops[:4]]
        qkv.set_num_threads(2)
        two = [op() for op in ops[:4]]
    finally:
        qkv.set_num_threads(None)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_concurrent_python_threads_agree_with_serial():
    ops = _ops(np.random.default_rng(1))
    serial = [op() for op in ops]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: ops[i % len(ops)](), range(4 * len(ops))))
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, serial[i % len(ops)])


def test_thread_pool_defaults_set_at_import_and_user_values_kept():
    code = "import os, qkv; print(os.environ['OMP_WAIT_POLICY'], os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PASSIVE", "4"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "ACTIVE"
