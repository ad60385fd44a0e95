"""qkv inspect --logit-lens and --patch CLEAN CORRUPT on a small random GPT folder written here: the
PNG is written with sane sizes, the numbers drawn are the model's (the logit lens's top row is the
model's own prediction; patching the embeddings at the one position where the texts differ restores
the clean run exactly, elsewhere it does nothing), and bad input ends in one line, exit 2 (through
qkv.cli.main and through a process)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qkv.cli import main
from qkv.nn import GPT, GPTConfig
from qkv.train import hf_config, hf_tensors
from safetensors.numpy import save_file
from test_cli_models import png_size, tiny_bert

FIX = Path(__file__).parent / "fixtures"
CLEAN, CORRUPT = "one two three", "one two thref"  # 9 tokens each, the last one differs


@pytest.fixture(scope="module")
def gpt_folder(tmp_path_factory):
    """A random 2-layer GPT (16 wide) with the fixture's byte-level BPE tokenizer (300 tokens), in
    Hugging Face's GPT-2 layout (as qkv train writes it)."""
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=16)).init_weights(0)
    rng = np.random.default_rng(0)
    for _, p in model.named_parameters():  # larger than the init: CLEAN and CORRUPT get different answers
        p += rng.normal(0, 0.3, p.shape).astype(p.dtype)
    folder = tmp_path_factory.mktemp("models") / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config(model.config)))
    save_file(hf_tensors(model), str(folder / "model.safetensors"))
    shutil.copy(FIX / "tiny_gpt2" / "tokenizer.json", folder)
    return str(folder)


@pytest.fixture
def drawn(monkeypatch):
    """Record what inspect asks qkv.plot.grid_heatmap to draw (and still draw it)."""
    import qkv.plot

    calls, real = [], qkv.plot.grid_heatmap

    def record(values, path, **kw):
        calls.append({"values": np.asarray(values), **kw})
        return real(values, path, **kw)

    monkeypatch.setattr(qkv.plot, "grid_heatmap", record)
    return calls


def test_logit_lens_png(gpt_folder, tmp_path, drawn, capsys):
    out = tmp_path / "lens.png"
    assert main(["inspect", CLEAN, "--logit-lens", "--model", gpt_folder, "--out", str(out)]) == 0
    w, h = png_size(out)
    assert 500 < w < 4000 and 200 < h < 4000
    assert "wrote" in capsys.readouterr().err
    (call,) = drawn
    probs, text = call["values"], np.asarray(call["cell_text"], dtype=object)
    assert probs.shape == (3, 9) == text.shape  # embeddings + 2 blocks, 9 tokens
    assert call["row_labels"] == ["embeddings", "after block 0", "after block 1"]
    assert call["col_labels"][:3] == ["on", "e", "␣t"]  # byte-level pieces decoded
    model = GPT.from_pretrained(gpt_folder)
    logits = model(np.array([model.tokenizer.encode(CLEAN).ids]))[0].astype(np.float64)  # (L, V)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs[-1], p.max(-1), rtol=1e-4)  # the top row is the model's own prediction
    assert ((probs > 0) & (probs <= 1)).all()


def test_patch_png(gpt_folder, tmp_path, drawn):
    out = tmp_path / "patch.png"
    assert main(["inspect", "--patch", CLEAN, CORRUPT, "--model", gpt_folder, "--out", str(out)]) == 0
    w, h = png_size(out)
    assert 500 < w < 4000 and 200 < h < 4000
    (call,) = drawn
    effect = call["values"]
    assert effect.shape == (2, 9)  # layers x positions
    assert call["col_labels"][-1] == "e/f"  # where the texts differ
    # resid_pre of block 0 is the embeddings: patching the one differing position makes the corrupt
    # run the clean run (effect 1), patching any other position changes nothing (effect 0)
    np.testing.assert_allclose(effect[0, -1], 1.0, atol=1e-4)
    np.testing.assert_allclose(effect[0, :-1], 0.0, atol=1e-6)
    np.testing.assert_allclose(effect[1, -1], 1.0, atol=1e-4)  # everything the last position will know


def test_default_output_names(gpt_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", CLEAN, "--logit-lens", "--model", gpt_folder]) == 0
    assert (tmp_path / "logit_lens.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["inspect", "hello", "--logit-lens"], "--logit-lens needs a decoder with an LM head"),
    (["inspect", "--patch", "a", "b"], "--patch needs a decoder with an LM head"),
    (["inspect", "hello", "--logit-lens", "--model", "{bert}"], "holds a Encoder, an encoder"),
    (["inspect", "--patch", CLEAN, "one two", "--model", "{gpt}"], "CLEAN has 9 tokens and CORRUPT 5"),
    (["inspect", "--patch", CLEAN, CLEAN, "--model", "{gpt}"], "both texts make the model predict the same"),
    (["inspect", "--patch", "a", "b", "c"], "--patch takes the two texts CLEAN CORRUPT; got a third"),
    (["inspect", "x", "--logit-lens", "--patch", "a", "b"], "give one of them"),
    (["inspect", "--logit-lens"], "give the TEXT to inspect"),
    (["inspect", "x", "--logit-lens", "--model", "{gpt}", "--out", "{gpt}"], "it is a folder"),
    (["inspect", "x " * 40, "--logit-lens", "--model", "{gpt}"], "the model's context is 32"),
    (["inspect", "--patch", "a", "  ", "--model", "{gpt}"], "give at least one non-empty text"),
])
def test_bad_input_is_one_line_exit_2(argv, message, gpt_folder, tmp_path, capsys):
    bert = tiny_bert(tmp_path / "bert")
    argv = [a.format(gpt=gpt_folder, bert=bert) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_in_a_process(gpt_folder, tmp_path):
    """The command as a user runs it: a PNG on success, one line and exit 2 for an encoder."""
    out = tmp_path / "p.png"
    cmd = [sys.executable, "-m", "qkv", "inspect", "--patch", CLEAN, CORRUPT, "--model", gpt_folder, "--out", str(out)]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert png_size(out)[0] > 500
    bad = subprocess.run([sys.executable, "-m", "qkv", "inspect", "hi", "--logit-lens"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr and "LM head" in bad.stderr
