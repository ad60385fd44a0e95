"""Bad input gives a clear ValueError/TypeError naming the argument and the shapes."""

import numpy as np
import pytest

import qkv

f32 = np.float32


def z(*shape, dtype=f32):
    return np.zeros(shape, dtype)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: qkv.softmax(z(3, 4).astype(np.int32)), TypeError, "x has dtype int32"),
        (lambda: qkv.softmax(z(3, 4).astype(np.complex64)), TypeError, "x has dtype complex64"),
        (lambda: qkv.softmax(z(3, 4).astype(np.float16)), TypeError, "float16"),
        (lambda: qkv.softmax(z(3, 0)), ValueError, r"empty dimension, shape \(3, 0\)"),
        (lambda: qkv.softmax(np.float32(1.0) * z()), ValueError, "at least 1 dimension"),
        (lambda: qkv.softmax(z(3, 4), axis=2), ValueError, r"axis 2 is out of range for x of shape \(3, 4\)"),
        (lambda: qkv.softmax(z(3, 4), mask=z(5, 4) > 0), ValueError, r"mask of shape \(5, 4\) does not broadcast"),
        (lambda: qkv.softmax(z(3, 4), mask=z(3, 4).astype(np.int8)), TypeError, "mask must be boolean"),
        (lambda: qkv.softmax(z(4), causal=True), ValueError, "causal needs x with at least 2 dims"),
        (lambda: qkv.softmax(z(3, 4), causal="diagonal"), ValueError, "causal must be"),
        (lambda: qkv.softmax(z(3, 4), scale=float("nan")), TypeError, "scale must be a finite"),
        (lambda: qkv.softmax(z(3, 4), out=z(4, 3)), ValueError, r"out has shape \(4, 3\)"),
        (lambda: qkv.layer_norm(z(3, 4), z(5)), ValueError, r"weight must have shape \(4,\) to match x of shape \(3, 4\), got \(5,\)"),
        (lambda: qkv.layer_norm(z(3, 4), z(4, dtype=np.float64)), TypeError, "weight has dtype float64 but x has dtype float32"),
        (lambda: qkv.layer_norm(z(3, 4), eps=-1.0), ValueError, "eps must be >= 0"),
        (lambda: qkv.gelu(z(3), approximate="fast"), ValueError, "approximate must be"),
        (lambda: qkv.linear(z(2, 3), z(4, 5)), ValueError, r"x of shape \(2, 3\) has 3 features but weight of shape \(4, 5\)"),
        (lambda: qkv.linear(z(2, 3), z(3)), ValueError, "weight must be 2-D"),
        (lambda: qkv.linear(z(2, 3), z(3, 5), z(4)), ValueError, r"bias must have shape \(5,\)"),
        (lambda: qkv.linear(z(2, 3), z(3, 5), activation="tanh"), ValueError, "activation must be one of"),
        (lambda: qkv.linear(z(2, 0), z(0, 5)), ValueError, "empty dimension"),
        (lambda: qkv.mlp(z(2, 3), z(3, 4), None, z(4, 3), None, activation="swish"), ValueError, "activation"),
        (lambda: qkv.attention(z(1, 2, 3), z(1, 2, 3, 4), z(1, 2, 3, 4)), ValueError, r"q must be 4-D \(B, H, L, D\), got shape \(1, 2, 3\)"),
        (lambda: qkv.attention(z(1, 3, 5, 4), z(1, 2, 5, 4), z(1, 2, 5, 4)), ValueError, r"q heads \(3\) must be a multiple of k/v heads \(2\)"),
        (lambda: qkv.attention(z(1, 2, 5, 4), z(1, 2, 5, 8), z(1, 2, 5, 4)), ValueError, "head dims differ"),
        (lambda: qkv.attention(z(1, 2, 5, 4), z(1, 2, 5, 4), z(1, 2, 6, 4)), ValueError, "k and v must agree"),
        (lambda: qkv.attention(z(2, 2, 5, 4), z(1, 2, 5, 4), z(1, 2, 5, 4)), ValueError, "batch sizes differ"),
        (lambda: qkv.attention(z(1, 2, 5, 4), z(1, 2, 5, 4), None), TypeError, "v must be an array, got NoneType"),
        (lambda: qkv.attention(z(1, 2, 5, 4), z(1, 2, 5, 4, dtype=np.float64), z(1, 2, 5, 4)), TypeError, "k has dtype float64"),
        (lambda: qkv.attention(z(1, 2, 5, 4), z(1, 2, 5, 4), z(1, 2, 5, 4), mask=z(3, 5) > 0), ValueError, r"mask of shape \(3, 5\) does not broadcast to scores"),
        (lambda: qkv.attention(z(2, 2, 5, 4), z(2, 2, 5, 4), z(2, 2, 5, 4), kv_lengths=np.array([1, 6])), ValueError, r"kv_lengths must lie in \[0, 5\]"),
        (lambda: qkv.attention(z(2, 2, 5, 4), z(2, 2, 5, 4), z(2, 2, 5, 4), kv_lengths=np.array([1.0, 2.0])), TypeError, "kv_lengths must be integers"),
        (lambda: qkv.attention(z(2, 2, 5, 4), z(2, 2, 5, 4), z(2, 2, 5, 4), kv_lengths=np.array([1])), ValueError, r"kv_lengths must have shape \(2,\)"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_out_overlapping_input_is_refused():
    x = np.zeros((3, 4), f32)
    with pytest.raises(ValueError, match="out overlaps the input x"):
        qkv.softmax(x, out=x)
    with pytest.raises(ValueError, match="out overlaps"):
        qkv.gelu(x, out=x)


def test_out_must_be_writeable_and_contiguous():
    x = np.zeros((3, 4), f32)
    ro = np.zeros((3, 4), f32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        qkv.layer_norm(x, out=ro)
    with pytest.raises(ValueError, match="C-contiguous"):
        qkv.layer_norm(x, out=np.zeros((4, 3), f32).T)
