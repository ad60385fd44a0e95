"""No op writes into its inputs; read-only inputs are accepted."""

import numpy as np

import qkv


def _frozen(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def test_inputs_unchanged_and_readonly_ok(backend, dtype):
    rng = np.random.default_rng(0)
    x = _frozen(rng.standard_normal((2, 3, 8, 8)).astype(dtype))
    mask = _frozen(rng.random((8, 8)) > 0.3)
    addmask = _frozen(np.where(rng.random((8, 8)) > 0.3, 0.0, -np.inf).astype(dtype))
    w = _frozen(rng.standard_normal((8, 5)).astype(dtype))
    b = _frozen(rng.standard_normal(5).astype(dtype))
    g = _frozen(rng.standard_normal(8).astype(dtype))
    kvl = _frozen(np.array([8, 3]))
    inputs = [x, mask, addmask, w, b, g, kvl]
    before = [a.copy() for a in inputs]
    qkv.softmax(x, mask=mask, causal=True)
    qkv.softmax(x, mask=addmask, scale=0.5)
    qkv.layer_norm(x, g, g)
    qkv.gelu(x)
    qkv.linear(x, w, b, "gelu")
    qkv.mlp(x, w, b, _frozen(w.T), g)
    if backend == "numpy" or hasattr(qkv._cpu, "attention"):
        qkv.attention(x, x, x, causal=True, mask=mask, kv_lengths=kvl, return_lse=True, return_weights=True)
    for a, a0 in zip(inputs, before):
        np.testing.assert_array_equal(a, a0)
