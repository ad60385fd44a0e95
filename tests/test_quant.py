"""qkv.QuantizedWeight and qkv.linear with bf16 / int8 weights (src/qkv/quant.py, csrc/quant.c).

The kernels must be exact up to float32 rounding: against the float64 product with the dequantised
weights, |y - ref| <= gamma_K (|x| @ |W| + |b|) with gamma_K = K * 2^-24 (a sum of K float32 products)
-- at every SIMD level, for the decode kernel (M <= 4 rows) and the GEMM path (more rows), and with
the same bits for 1 and 2 threads.
"""

import numpy as np
import pytest

import qkv
from qkv._cpu import _config
from qkv._cpu._quant import SMALL_M, dequant_bf16_rows, dequant_q8_rows
from qkv.quant import BLOCK, QuantizedWeight

FORMATS = ("bf16", "int8")
# (M, K, N): one row (decode), a few rows, K and N not multiples of 16/32/4, the GEMM path (M > 4)
SHAPES = [(1, 768, 200), (1, 33, 5), (3, 100, 37), (4, 64, 9), (5, 96, 33), (17, 40, 70), (64, 256, 130)]


def _draw(rng, M, K, N):
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    return x, w, b


def _bound(x, wq, b, activation):
    """gamma_K (|x| @ |W| + |b|), widened for the activation's slope (<= 1.13) and its own rounding."""
    K = x.shape[-1]
    mag = np.abs(x.astype(np.float64)) @ np.abs(wq.dequantize(np.float64)) + (0 if b is None else np.abs(b))
    return 1.2 * K * 2.0**-24 * mag + 1e-6 * mag


def test_bf16_rounds_to_nearest_even_and_keeps_nan():
    w = np.array([[1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5e-3, np.nan, np.inf, 0.0, 3.0e38]], np.float32).T
    wq = qkv.quantize_weight(w, "bf16")
    d = wq.dequantize()[:, 0]
    assert d[0] == 1.0 and d[1] == 1.0 and d[2] == 1.0 + 4 * 2**-8  # ties to even
    assert np.isnan(d[4]) and d[5] == np.inf and d[6] == 0.0 and np.isfinite(d[7])
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 48)).astype(np.float32)
    wq = qkv.quantize_weight(w, "bf16")
    assert wq.data.dtype == np.uint16 and wq.data.shape == (48, 64) and wq.scales is None and wq.nbytes == w.nbytes // 2
    assert np.all(np.abs(wq.dequantize() - w) <= 2.0**-8 * np.abs(w))


def test_int8_is_q8_0():
    rng = np.random.default_rng(1)
    K, N = 100, 7  # K padded to 128: 4 blocks, the last one partial
    w = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    w[:32, 0] = 0  # an all-zero block: scale 0, values 0
    wq = qkv.quantize_weight(w, "int8")
    assert wq.data.dtype == np.int8 and wq.data.shape == (N, 128)
    assert wq.scales.dtype == np.float16 and wq.scales.shape == (N, 4)
    assert wq.scales[0, 0] == 0 and not wq.data[0, :32].any() and not wq.data[:, K:].any()
    assert np.abs(wq.data).max() <= 127
    d = wq.dequantize()
    np.testing.assert_array_equal(d, (wq.data[:, :K].astype(np.float32).reshape(N, -1)
                                      * 1).reshape(N, K).T * np.repeat(wq.scales.astype(np.float32), BLOCK, 1)[:, :K].T)
    amax = np.abs(np.pad(w.T, ((0, 0), (0, 28)))).reshape(N, 4, BLOCK).max(-1)  # (N, 4)
    s = wq.scales.astype(np.float64)
    err_bound = 0.5 * s + 127 * np.abs(s - amax / 127)  # rounding of q, and of the scale to float16
    err = np.abs(d - w).T  # (N, K)
    assert np.all(err <= np.repeat(err_bound, BLOCK, 1)[:, :K] * (1 + 1e-6))
    # 34 bytes per 32 weights, as llama.cpp
    assert qkv.quantize_weight(np.ones((768, 64), np.float32), "int8").nbytes == 768 * 64 * 34 // 32


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_linear_exact_up_to_float32_rounding(simd, fmt, M, K, N):
    rng = np.random.default_rng(M * 1000 + K + N)
    x, w, b = _draw(rng, M, K, N)
    wq = qkv.quantize_weight(w, fmt)
    for bias, act in ((None, None), (b, None), (b, "gelu_tanh"), (b, "relu")):
        with qkv.use_backend("numpy"):
            ref = qkv.linear(x.astype(np.float64), wq.dequantize(np.float64), None if bias is None else
                             bias.astype(np.float64), act)
        y = qkv.linear(x, wq, bias, act)
        assert y.dtype == np.float32 and y.shape == (M, N)
        assert np.all(np.abs(y - ref) <= _bound(x, wq, bias, act)), (fmt, simd, act, np.abs(y - ref).max())


@pytest.mark.parametrize("fmt", FORMATS)
def test_numpy_backend_dequantises_in_float64(fmt):
    rng = np.random.default_rng(5)
    x, w, b = _draw(rng, 3, 70, 11)
    wq = qkv.quantize_weight(w, fmt)
    with qkv.use_backend("numpy"):
        y = qkv.linear(x, wq, b, "gelu")
        ref = qkv.linear(x.astype(np.float64), wq.dequantize(np.float64), b.astype(np.float64), "gelu")
    np.testing.assert_allclose(y, ref.astype(np.float32), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fmt", FORMATS)
def test_batched_leading_axes_noncontiguous_and_out(fmt):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 160)).astype(np.float32)[..., ::2]  # (2, 3, 80), not contiguous
    w = (rng.standard_normal((80, 24)) * 0.1).astype(np.float32)
    wq = qkv.quantize_weight(w, fmt)
    x0 = x.copy()
    y = qkv.linear(x, wq)
    np.testing.assert_array_equal(x, x0)
    out = np.empty((2, 3, 24), np.float32)
    assert qkv.linear(x, wq, out=out) is out
    np.testing.assert_array_equal(out, y)
    with qkv.use_backend("numpy"):
        ref = qkv.linear(x.astype(np.float64), wq.dequantize(np.float64))
    assert np.all(np.abs(y - ref) <= _bound(x, wq, None, None))


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_dimensional_x_is_one_row(fmt):
    """x (K,) -> (N,): the same bits as the row x[None] (linear_cpu's no-copy path for a 1-D x),
    also for a strided 1-D x and with out=."""
    rng = np.random.default_rng(12)
    x, w, b = _draw(rng, 1, 96, 40)
    wq = qkv.quantize_weight(w, fmt)
    row = qkv.linear(x, wq, b, "gelu_tanh")
    y = qkv.linear(x[0], wq, b, "gelu_tanh")
    assert y.shape == (40,)
    np.testing.assert_array_equal(y, row[0])
    xs = np.repeat(x[0], 2)[::2]  # (96,), stride 8 bytes
    out = np.empty(40, np.float32)
    assert qkv.linear(xs, wq, b, "gelu_tanh", out=out) is out
    np.testing.assert_array_equal(out, row[0])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("M", [1, SMALL_M])
def test_decode_kernel_one_and_two_threads_bit_identical(fmt, M):
    """The decode kernel computes each output in a fixed order whoever runs it. (The GEMM path is
    SciPy's sgemm, whose bits may depend on its thread count, as for float qkv.linear.)"""
    rng = np.random.default_rng(7)
    x, w, b = _draw(rng, M, 512, 1001)
    wq = qkv.quantize_weight(w, fmt)
    try:
        qkv.set_num_threads(1)
        one = qkv.linear(x, wq, b, "gelu_tanh")
        qkv.set_num_threads(2)
        two = qkv.linear(x, wq, b, "gelu_tanh")
        again = qkv.linear(x, wq, b, "gelu_tanh")
    finally:
        qkv.set_num_threads(None)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(two, again)


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_kernel_and_gemm_path_agree(fmt):
    """Row r of a batch (GEMM path) and row r alone (decode kernel): equal up to float32 rounding."""
    rng = np.random.default_rng(8)
    x, w, b = _draw(rng, 9, 300, 50)
    wq = qkv.quantize_weight(w, fmt)
    batch = qkv.linear(x, wq, b)
    alone = np.concatenate([qkv.linear(x[r:r + 1], wq, b) for r in range(len(x))])
    assert np.all(np.abs(batch - alone) <= 2 * _bound(x, wq, b, None))


@pytest.mark.parametrize("fmt", FORMATS)
def test_c_dequantisation_matches_python(simd, fmt):
    rng = np.random.default_rng(9)
    w = rng.standard_normal((70, 45)).astype(np.float32)  # K = 70: a partial int8 block
    wq = qkv.quantize_weight(w, fmt)
    out = np.empty((45, 70), np.float32)
    if fmt == "bf16":
        dequant_bf16_rows(out, wq.data, _config.simd_level(), 2)
    else:
        dequant_q8_rows(out, wq.data, wq.scales.view(np.uint16), _config.simd_level(), 2)
    np.testing.assert_array_equal(out, wq.dequantize().T)


@pytest.mark.parametrize("fmt", FORMATS)
def test_transposed_view_gathers_rows(fmt):
    """A (V, C) table stored as quantize_weight(E.T).T: E[ids] dequantised, and .T the (C, V) head."""
    rng = np.random.default_rng(10)
    E = rng.standard_normal((50, 64)).astype(np.float32)
    eq = qkv.quantize_weight(E.T, fmt).T
    assert eq.shape == (50, 64) and eq.axis == 1 and eq.T.shape == (64, 50) and eq.T.axis == 0
    ids = np.array([[3, 0, 49], [7, 7, 1]])
    g = eq[ids]
    assert g.shape == (2, 3, 64) and g.dtype == np.float32
    np.testing.assert_array_equal(g, eq.dequantize()[ids])
    np.testing.assert_array_equal(eq.T.dequantize(), eq.dequantize().T)


def test_errors_name_the_argument():
    rng = np.random.default_rng(11)
    x, w, b = _draw(rng, 2, 64, 8)
    wq = qkv.quantize_weight(w, "int8")
    with pytest.raises(TypeError, match="x must be float32"):
        qkv.linear(x.astype(np.float64), wq)
    with pytest.raises(TypeError, match="bias must be float32"):
        qkv.linear(x, wq, b.astype(np.float64))
    with pytest.raises(TypeError, match="out must be float32"):
        qkv.linear(x, wq, out=np.empty((2, 8)))
    with pytest.raises(TypeError, match="weight is a QuantizedWeight .* axis 1"):
        qkv.linear(x[:, :8], wq.T)
    with pytest.raises(TypeError, match="return_preact"):
        qkv.linear(x, wq, return_preact=True)
    with pytest.raises(ValueError, match="x of shape \\(2, 63\\)"):
        qkv.linear(x[:, :63], wq)
    with pytest.raises(ValueError, match="bias must have shape \\(8,\\)"):
        qkv.linear(x, wq, b[:7])
    with pytest.raises(ValueError, match="activation"):
        qkv.linear(x, wq, activation="tanh")
    with pytest.raises(ValueError, match="format must be one of"):
        qkv.quantize_weight(w, "int4")
    with pytest.raises(TypeError, match="weight must be a NumPy array"):
        qkv.quantize_weight(w.tolist(), "bf16")
    with pytest.raises(TypeError, match="already quantized"):
        qkv.quantize_weight(wq, "bf16")
    with pytest.raises(ValueError, match="2-D float"):
        qkv.quantize_weight(np.ones(4, np.float32), "bf16")
    with pytest.raises(ValueError, match="finite"):
        qkv.quantize_weight(np.full((32, 2), np.nan, np.float32), "int8")
    with pytest.raises(TypeError, match="data must be a NumPy uint16"):
        QuantizedWeight("bf16", (64, 8), wq.data)
    with pytest.raises(TypeError, match="scales must be a float16"):
        QuantizedWeight("int8", (64, 8), wq.data, wq.scales.astype(np.float32))
    with pytest.raises(TypeError, match="indexed by row ids"):
        wq[np.array([0])]


def test_qkv_info_names_the_quantized_kernel():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "qkv", "info", "--json"], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "QKV_SIMD": "scalar"})
    assert json.loads(out.stdout)["quantized_linear"] == "plain C loops"
