"""qkv.train and ``qkv train``: the data pipeline, checkpoints that GPT.from_pretrained, qkv
generate and transformers read, a resumed run equal to an uninterrupted one, atomic writes, and
one-line errors (exit 2) for bad input with the last good checkpoint kept."""

import json
from pathlib import Path

import numpy as np
import pytest

import qkv
from qkv import train as tr
from qkv.cli import main
from qkv.nn import GPT
from test_train import cpu_attention_backward_reason

pytestmark = pytest.mark.skipif(cpu_attention_backward_reason() is not None,
                                reason=cpu_attention_backward_reason() or "")

WORDS = "the cat sat on a mat while attention moved meaning between tokens of text".split()


@pytest.fixture
def text_file(tmp_path):
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, 8)) for _ in range(300)]  # ~14k characters
    f = tmp_path / "corpus.txt"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f


def _settings(text_file, **kw):
    base = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, steps=12, eval_interval=4,
                eval_iters=2, tokenizer="char", text=str(text_file), lr=3e-3, min_lr=3e-4, warmup=2, sample_tokens=20)
    return tr.Settings.from_preset("baby", **{**base, **kw})


def test_resume_continues_exactly(tmp_path, text_file):
    quiet = lambda msg: None  # noqa: E731
    whole = tr.train(_settings(text_file), tmp_path / "a", log=quiet)
    first = tr.train(_settings(text_file), tmp_path / "b", stop_after=6, log=quiet)
    assert first["stopped"] and len(first["history"]) == 6
    state, _ = tr.load_state(tmp_path / "b")
    assert state["step"] == 6
    rest = tr.train(None, tmp_path / "b", resume=True, log=quiet)
    assert rest["history"] == whole["history"]  # the same loss at every step, bit for bit
    assert [e["val"] for e in rest["evals"]] == [e["val"] for e in whole["evals"]]
    a, b = GPT.from_pretrained(tmp_path / "a"), GPT.from_pretrained(tmp_path / "b")
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert np.array_equal(p, q), name


def test_training_lowers_the_loss(tmp_path, text_file):
    res = tr.train(_settings(text_file, steps=40, eval_interval=20), tmp_path / "run", log=lambda m: None)
    assert res["history"][0] == pytest.approx(np.log(len(set(text_file.read_text()))), rel=0.05)  # uniform at init
    assert res["evals"][-1]["val"] < res["history"][0] - 0.3
    assert np.mean(res["history"][-5:]) < np.mean(res["history"][:5])


def test_cli_writes_a_model_folder(tmp_path, text_file, capsys):
    out = tmp_path / "model"
    assert main(["train", "--text", str(text_file), "--out", str(out), "--steps", "3", "--sample-tokens", "20",
                 "--block-size", "16", "--batch-size", "2", "--eval-interval", "2"]) == 0
    sample = capsys.readouterr().out
    assert sample.strip()
    for f in ("config.json", "model.safetensors", "tokenizer.json", "training_state.safetensors", "loss.png",
              "sample.txt"):
        assert (out / f).is_file(), f
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    model = GPT.from_pretrained(out)
    assert model.config.n_layer == 4 and model.config.block_size == 16  # the baby preset, --block-size 16
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = text_file.read_text()[:200]
    assert tok.decode(tok.encode(text).ids) == text  # one token per character, lossless
    assert tok.get_vocab_size() == len(set(text_file.read_text()))
    assert main(["generate", "--model", str(out), "--prompt", "the cat", "--max-new-tokens", "5", "--seed",
                 "1"]) == 0
    assert capsys.readouterr().out.startswith("the cat")
    assert main(["inspect", "the cat", "--model", str(out), "--out", str(tmp_path / "a.png")]) == 0


def test_cli_bpe_tokenizer(tmp_path, text_file, capsys):
    out = tmp_path / "bpe"
    assert main(["train", "--text", str(text_file), "--out", str(out), "--steps", "2", "--sample-tokens", "20",
                 "--block-size", "8", "--batch-size", "2", "--tokenizer", "bpe:300"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["vocab_size"] <= 300
    assert type(GPT.from_pretrained(out).tokenizer.decoder).__name__ == "ByteLevel"


def test_checkpoint_loads_in_transformers(tmp_path, text_file):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    tr.train(_settings(text_file, steps=2), tmp_path / "m", log=lambda m: None)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "m").eval()
    ours = GPT.from_pretrained(tmp_path / "m")
    ids = np.array([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        want = theirs(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(ours(ids), want, rtol=1e-4, atol=1e-4)


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


def test_cli_bad_input(tmp_path, text_file, capsys):
    out = str(tmp_path / "o")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert "empty" in _error(capsys, ["train", "--text", str(empty), "--out", out])
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert "binary" in _error(capsys, ["train", "--text", str(binary), "--out", out])
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    assert "UTF-8" in _error(capsys, ["train", "--text", str(latin), "--out", out])
    short = tmp_path / "short.txt"
    short.write_text("a few words only\n")
    assert "too short" in _error(capsys, ["train", "--text", str(short), "--out", out])
    assert "No such file" in _error(capsys, ["train", "--text", str(tmp_path / "missing.txt"), "--out", out])
    assert "tokenizer" in _error(capsys, ["train", "--text", str(text_file), "--out", out, "--tokenizer", "bpe:9"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _error(capsys, ["train", "--text", str(text_file), "--out", str(blocker / "sub")])  # cannot be created
    assert "is a file" in _error(capsys, ["train", "--text", str(text_file), "--out", str(blocker)])
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert "not empty" in _error(capsys, ["train", "--text", str(text_file), "--out", str(full)])
    assert (full / "keep.txt").read_text() == "mine"
    assert "no training run" in _error(capsys, ["train", "--text", str(text_file), "--out", str(tmp_path / "new"),
                                                "--resume"])
    assert not any((tmp_path / "o").glob("*.safetensors"))


def test_cli_resume_errors_keep_the_run(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    args = ["train", "--text", str(text_file), "--out", str(out), "--sample-tokens", "20", "--block-size", "16",
            "--batch-size", "2"]
    assert main(args + ["--steps", "2"]) == 0
    capsys.readouterr()
    before = (out / "training_state.safetensors").read_bytes()
    assert "already holds a training run" in _error(capsys, args + ["--steps", "2"])
    err = _error(capsys, ["train", "--out", str(out), "--resume", "--block-size", "32", "--text", str(text_file)])
    assert "block_size" in err
    other = tmp_path / "other.txt"
    other.write_text(text_file.read_text().upper())
    assert "differs" in _error(capsys, ["train", "--out", str(out), "--resume", "--text", str(other)])
    assert (out / "training_state.safetensors").read_bytes() == before
    assert main(["train", "--out", str(out), "--resume", "--steps", "3"]) == 0  # extend the run by a step
    assert tr.load_state(out)[0]["step"] == 3


def test_nan_loss_stops_and_keeps_the_checkpoint(tmp_path, text_file, capsys, monkeypatch):
    real = GPT.value_and_grad
    calls = []

    def flaky(self, ids, targets):
        loss, grads = real(self, ids, targets)
        calls.append(1)
        return (float("nan") if len(calls) == 4 else loss), grads

    monkeypatch.setattr(GPT, "value_and_grad", flaky)
    out = tmp_path / "run"
    err = _error(capsys, ["train", "--text", str(text_file), "--out", str(out), "--steps", "6", "--sample-tokens", "20",
                          "--block-size", "16", "--batch-size", "2", "--eval-interval", "2"])
    assert "nan at step 3" in err and "step 2" in err
    state, _ = tr.load_state(out)
    assert state["step"] == 2 and len(state["history"]) == 2
    GPT.from_pretrained(out)  # the folder is whole


def test_atomic_write_keeps_the_old_file(tmp_path):
    f = tmp_path / "config.json"
    f.write_text("old")

    def broken(tmp):
        Path(tmp).write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        tr._atomic_write(f, broken)
    assert f.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_default_text_is_fixed_and_bounded():
    a, b = tr.default_text(20_000), tr.default_text(20_000)
    assert a == b and len(a) == 20_000 and "def " in a


def test_batches_depend_only_on_seed_and_step():
    data = np.arange(1000, dtype=np.int32)
    x1, y1 = tr.get_batch(data, 4, 8, tr.batch_rng(0, 5))
    x2, y2 = tr.get_batch(data, 4, 8, tr.batch_rng(0, 5))
    assert np.array_equal(x1, x2) and np.array_equal(y1, x1 + 1)
    assert not np.array_equal(x1, tr.get_batch(data, 4, 8, tr.batch_rng(0, 6))[0])


def test_ctrl_c_keeps_the_steps_done_and_resume_finishes_them(tmp_path, text_file, capsys, monkeypatch):
    """Ctrl-C between two steps: exit 130 with a checkpoint of the steps done; --resume then ends
    with the same losses at every step as a run never interrupted."""
    args = ["--text", str(text_file), "--steps", "6", "--sample-tokens", "20", "--block-size", "16", "--batch-size",
            "2", "--eval-interval", "4"]
    assert main(["train", "--out", str(tmp_path / "whole")] + args) == 0
    real = GPT.value_and_grad
    calls = []

    def interrupted(self, ids, targets):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, ids, targets)

    monkeypatch.setattr(GPT, "value_and_grad", interrupted)
    assert main(["train", "--out", str(tmp_path / "cut")] + args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert tr.load_state(tmp_path / "cut")[0]["step"] == 3
    monkeypatch.setattr(GPT, "value_and_grad", real)
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    whole, cut = tr.load_state(tmp_path / "whole")[0], tr.load_state(tmp_path / "cut")[0]
    assert cut["history"] == whole["history"] and len(cut["history"]) == 6
