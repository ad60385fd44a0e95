"""Hook points, the activation cache and qkv.lens with the model on a real GPU (CuPy arrays):
every activation against the float64 forward written by hand (tests/hooks_reference.py), the
logits bit for bit with and without a cache, edits carried downstream, float16. Marked ``gpu``:
skipped when CuPy or a device is missing."""

import numpy as np
import pytest

import qkv.lens as lens
from hooks_reference import gpt_forward, small_encoder, encoder_forward, small_gpt
from qkv.nn import hook_names

pytestmark = pytest.mark.gpu
cp = pytest.importorskip("cupy")

IDS = np.random.default_rng(1).integers(0, 64, (2, 13))


def close(actual, expected, name="", k=1e-3):
    expected = np.asarray(expected)
    np.testing.assert_allclose(cp.asnumpy(actual).astype(np.float64), expected, rtol=0,
                               atol=k * max(1.0, float(np.abs(expected).max())), err_msg=name)


@pytest.fixture(scope="module")
def model():
    return small_gpt().to("cuda")


def test_every_activation_on_the_gpu(model):
    ids = cp.asarray(IDS)
    logits_ref, acts_ref = gpt_forward(model, IDS)
    logits, cache = model.run_with_cache(ids, names=lambda n: True)
    assert list(cache) == hook_names(model)
    for name in hook_names(model):
        assert isinstance(cache[name], cp.ndarray) and cache[name].shape == acts_ref[name].shape, name
        close(cache[name], acts_ref[name], name)
    close(logits, logits_ref)
    assert cp.array_equal(logits, model(ids))  # bit for bit with the fused path
    assert cp.array_equal(model.run_with_hooks(ids, hooks={n: (lambda x, n: x) for n in hook_names(model)}),
                          model(ids))


@pytest.mark.parametrize("name, head_axis", [("blocks.1.attn.hook_z", 2), ("blocks.0.attn.hook_pattern", 1),
                                             ("blocks.0.attn.hook_v", 2), ("blocks.1.attn.hook_result", 2)])
def test_zero_ablating_a_head_on_the_gpu(model, name, head_axis):
    def zero(x, _):
        x = x.copy()
        x[(slice(None),) * head_axis + (1,)] = 0
        return x

    logits_ref, _ = gpt_forward(model, IDS, edits={name: zero})
    close(model.run_with_hooks(cp.asarray(IDS), hooks={name: zero}), logits_ref, name)


def test_lens_on_the_gpu(model):
    ids = cp.asarray(np.concatenate([IDS[:, :6], IDS[:, :6]], axis=1))
    logits, cache = model.run_with_cache(ids)
    lensed = lens.logit_lens(model, cache)
    assert isinstance(lensed, cp.ndarray) and lensed.shape == (3,) + logits.shape
    cp.testing.assert_allclose(lensed[-1], logits, atol=1e-4, rtol=0)
    cpu = small_gpt()
    _, cpu_cache = cpu.run_with_cache(cp.asnumpy(ids))
    np.testing.assert_allclose(lens.induction_score(cache, 6), lens.induction_score(cpu_cache, 6), atol=1e-4)
    np.testing.assert_allclose(lens.direct_logit_attribution(model, cache, 3, 4),
                               lens.direct_logit_attribution(cpu, cpu_cache, 3, 4), atol=1e-3)
    got = lens.activation_patching(model, IDS[:1], IDS[1:], lambda x: float(x[0, -1, 3] - x[0, -1, 4]), per="head")
    want = lens.activation_patching(cpu, IDS[:1], IDS[1:], lambda x: float(x[0, -1, 3] - x[0, -1, 4]), per="head")
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_encoder_on_the_gpu():
    m = small_encoder()
    ids = np.random.default_rng(2).integers(0, 50, (3, 11))
    am = np.ones((3, 11), np.int64)
    am[1, 7:] = 0
    out_ref, acts_ref = encoder_forward(m, ids, am)
    m.to("cuda")
    out, cache = m.run_with_cache(cp.asarray(ids), names=lambda n: True, attention_mask=cp.asarray(am))
    close(out, out_ref)
    for n in hook_names(m):
        close(cache[n], acts_ref[n], n)


def test_float16_patterns():
    m = small_gpt(dtype=np.float16).to("cuda")
    _, cache = m.run_with_cache(cp.asarray(IDS), names=["blocks.1.attn.hook_pattern"])
    p = cache["blocks.1.attn.hook_pattern"]
    assert p.dtype == cp.float16
    cp.testing.assert_allclose(p.astype(cp.float32).sum(-1), 1, atol=1e-2)
