"""Attention-only GPTs (GPTConfig(attn_only=True)) and the induction-head demo (qkv.induction,
``qkv demo induction``).

- The attention-only block has no MLP and no ln_2: its parameters, its forward (x + attn(ln_1(x)))
  and value_and_grad by central differences of the float64 forward.
- The demo, trained with deterministic seeds: the best induction score is >= 0.5 and zero-ablating
  that head (its hook_z, through run_with_hooks) raises the loss on the second copy by >= 1 nat.
"""

import numpy as np
import pytest
from conftest import assert_grads_fd

import qkv
from qkv.nn import GPT, GPTConfig
from test_train import cpu_attention_backward_reason


def tiny(seed=0, dtype=np.float64, **kw):
    cfg = GPTConfig(**{**dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, attn_only=True), **kw})
    model = GPT(cfg, dtype=dtype).init_weights(seed)
    rng = np.random.default_rng(seed + 1)
    for _, p in model.named_parameters():  # larger than the init, so every path carries signal
        p += rng.normal(0, 0.3, p.shape)
    return model


def test_attn_only_block_has_no_mlp():
    model = tiny()
    names = [n for n, _ in model.named_parameters()]
    assert not any(".mlp." in n or ".ln_2." in n for n in names)
    assert all(b.mlp is None and b.ln_2 is None for b in model.h)
    full = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    assert model.num_parameters() == full.num_parameters() - 2 * (8 * 32 + 32 + 32 * 8 + 8 + 2 * 8)


def test_attn_only_forward_by_hand():
    """logits = ln_f(x + sum of the blocks' attention outputs) @ wte.T, each block x + attn(ln_1(x))."""
    model = tiny()
    ids = np.array([[1, 4, 2, 9, 4, 2]])
    with qkv.use_backend("numpy"):
        x = model.embeddings(ids)
        for b in model.h:
            x = x + b.attn(b.ln_1(x))
        want = model.ln_f(x) @ model.embeddings.wte.T
        got = model(ids)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("cpu", marks=pytest.mark.skipif(
    cpu_attention_backward_reason() is not None, reason=cpu_attention_backward_reason() or ""))])
def test_attn_only_value_and_grad_by_finite_differences(backend):
    """Central differences of the float64 forward at a sample of every parameter."""
    model = tiny()
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 11, (2, 7))
    targets = rng.integers(0, 11, (2, 7))
    targets[0, 3] = -1
    with qkv.use_backend(backend):
        loss, grads = model.value_and_grad(ids, targets)
        grads = {k: g.copy() for k, g in grads.items()}
        assert loss == pytest.approx(float(qkv.cross_entropy(model(ids), targets)), rel=1e-12)
        assert set(grads) == {n for n, _ in model.named_parameters()}
        assert_grads_fd(model, ids, targets, grads)


def test_attn_only_needs_pre_ln():
    from qkv.nn import Block

    with pytest.raises(ValueError, match="attn_only needs pre_ln=True"):
        Block(8, 2, 32, pre_ln=False, attn_only=True)


# ----------------------------------------------------------------------------
# the demo


def test_batches_and_weights_are_seeded():
    from qkv import induction

    s = induction.Settings(steps=3, batch_size=4)
    a, b = induction.train(s)[1], induction.train(s)[1]
    assert a == b  # the same losses, bit for bit
    ids, targets = induction.get_batch(s, 0)
    n = s.n_min
    assert ids.shape == (4, 2 * n) and (ids[:, 0] == induction.BOS).all()
    np.testing.assert_array_equal(ids[:, 1:n + 1], targets[:, n:])  # the second copy repeats the first
    assert not np.array_equal(induction.get_batch(s, 1)[0], ids)


@pytest.mark.skipif(cpu_attention_backward_reason() is not None, reason=cpu_attention_backward_reason() or "")
def test_demo_finds_an_induction_head(tmp_path):
    """The demo's defaults: the best induction score >= 0.5, and zero-ablating that head raises the
    second copy's loss by >= 1 nat."""
    from qkv import induction

    lines = []
    res = induction.run(induction.Settings(), tmp_path, log=lines.append)
    layer, head = res["best"]
    assert res["induction"][layer, head] >= 0.5
    assert res["second_ablated"] - res["second"] >= 1.0
    assert res["second"] < res["first"] - 2.0  # the second copy is learned, the first is noise
    assert res["first"] == pytest.approx(np.log(induction.Settings.vocab_size - 1), abs=0.2)
    assert res["png"].is_file() and res["png"].stat().st_size > 5000
    text = "\n".join(lines)
    assert "<- best induction head" in text and "zero-ablating head" in text


def test_demo_command(tmp_path, capsys):
    from qkv.cli import main

    assert main(["demo", "induction", "--steps", "2", "--seed", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "second copy" in out and (tmp_path / "induction_head.png").is_file()
    assert main(["demo", "induction", "--out", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    for bad in (["demo", "inductio"], ["demo", "induction", "--steps", "0"], ["demo", "induction", "--seed", "-1"]):
        with pytest.raises(SystemExit) as e:  # argparse: one line, exit 2
            main(bad)
        assert e.value.code == 2
