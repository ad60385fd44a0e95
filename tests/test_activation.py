"""qkv.gelu (tanh and erf) on every backend against the oracle."""

import numpy as np
import pytest
from conftest import adversarial_rows, assert_close

import qkv
from qkv import _reference as ref


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_adversarial(backend, simd, dtype, approximate):
    rng = np.random.default_rng(20)
    for name, x in adversarial_rows(rng, dtype):
        got = qkv.gelu(x, approximate)
        assert got.dtype == x.dtype
        assert_close(got, ref.gelu(x, approximate), k=32, scale=1e-20, err_msg=name)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_range(backend, simd, dtype, approximate):
    """Every regime: deep negative tail (tiny results), around 0, large positive (identity).

    In the negative tail GELU is ill-conditioned in its argument: an ulp of rounding in u (tanh
    form, inside exp(-2u)) or in z^2 (erf form, inside exp(-z^2)) moves the result by ~|2u| or
    ~z^2 ulp, for the oracle as for the kernel. The bound is 16 ulp times that condition number,
    with an absolute floor of 1e-300 (float64) / 1e-30 (float32).
    """
    x = np.concatenate([np.linspace(-30, 30, 6001), [-1e-30, 0.0, 1e-30, 1e4, -1e4, np.inf, -np.inf, np.nan]])
    x = x.astype(dtype)
    got = qkv.gelu(x, approximate).astype(np.float64)
    want = ref.gelu(x, approximate).astype(np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
    x64 = x.astype(np.float64)
    u = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)
    cond = 1 + (np.abs(2 * u) if approximate == "tanh" else x64**2 / 2)
    eps = np.finfo(dtype).eps
    floor = 1e-300 if dtype == np.float64 else 1e-30
    with np.errstate(invalid="ignore"):
        err = np.abs(got - want)[finite]
    bound = (16 * eps * cond * np.abs(want) + floor)[finite]
    assert np.all(err <= bound), f"worst at x={x[finite][np.argmax(err / bound)]}"


def test_scalar_and_0d(backend, dtype):
    x = np.array(0.5, dtype)
    assert_close(qkv.gelu(x), ref.gelu(x), k=16)


def test_out(backend, dtype):
    x = np.random.default_rng(21).standard_normal((4, 100)).astype(dtype)
    out = np.empty_like(x)
    assert qkv.gelu(x, out=out) is out
    assert_close(out, ref.gelu(x), k=32, scale=1e-20)
