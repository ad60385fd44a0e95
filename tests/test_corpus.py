"""Embedding a corpus on one machine (qkv.corpus, ``qkv embed --input FILE --output OUT``): a kill
at any moment and a re-run give the bytes of an uninterrupted run; every bad input ends in one
line, exit 2, with nothing lost; JSON Lines ids, blank lines, invalid UTF-8 and the truncation
count. A random 1-layer BERT (tests/test_cli_models.py's tiny_bert, 64 positions) keeps it fast."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_minilm
from qkv import corpus
from qkv.cli import main
from qkv.nn import Encoder
from test_cli_models import tiny_bert

WORDS = "the cat sat on a mat while dogs ran over green hills near quiet rivers".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("corpus") / "bert")


@pytest.fixture(scope="module")
def model(tiny):
    return Encoder.from_pretrained(tiny)


def sentences(n, seed=0, max_words=12):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(1, max_words + 1))) for _ in range(n)]


def embed_cli(capsys, *argv):
    code = main(["embed", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, err


def files_of(out):
    """Every file of OUT as bytes, by relative path (the done/ files included)."""
    out = Path(out)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------
# resume: SIGKILL at seeded moments, then the same command, gives the uninterrupted bytes


# The child dies by its own SIGKILL at the n-th call of one of the file-system steps the job is made
# of, so every kill lands, and lands at the same place on every machine, however loaded:
#   pwrite   half of a chunk's rows reach the file, then the kill (a half-written chunk)
#   fsync    just before an fsync (data written, not yet durable: the scan, the manifest, a chunk)
#   replace  just before an atomic rename (a done mark or the manifest still under its temporary name)
#   renamed  just after a rename, before its folder is fsynced
KILLER = """
import os, signal, sys
kind, n = sys.argv[1], int(sys.argv[2])
name = {"renamed": "replace"}.get(kind, kind)
real, calls = getattr(os, name), [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def wrapped(*a, **kw):
    calls[0] += 1
    if calls[0] != n:
        return real(*a, **kw)
    if kind == "pwrite":
        fd, data, where = a
        data = memoryview(data).cast("B")
        real(fd, data[: len(data) // 2], where)
        die()
    if kind != "renamed":
        die()
    real(*a, **kw)
    die()

setattr(os, name, wrapped)
from qkv.cli import main
sys.exit(main(sys.argv[3:]))
"""


def child(inp, out, tiny, kill=None):
    """``qkv embed --input INP --output OUT`` in a child process; ``kill=(kind, n)`` (see KILLER)."""
    argv = ["embed", "--input", str(inp), "--output", str(out), "--model", str(tiny), "--chunk-size", "64"]
    head = [sys.executable, "-c", KILLER, kill[0], str(kill[1])] if kill else [sys.executable, "-m", "qkv"]
    env = dict(os.environ, QKV_PROGRESS="0")
    return subprocess.Popen(head + argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def n_done(out):
    d = Path(out) / "done"
    return len(list(d.iterdir())) if d.is_dir() else 0


def test_resume_after_sigkill_gives_identical_bytes(tmp_path, tiny):
    inp = tmp_path / "corpus.txt"
    inp.write_text("\n".join(sentences(1500, max_words=30)) + "\n")  # 24 chunks of 64
    ref = child(inp, tmp_path / "ref", tiny)
    assert ref.wait(300) == 0, ref.stderr.read().decode()
    # seeded kill points, one run each on the same OUT; the first one lands during the set-up
    rng = np.random.default_rng(15)
    kills = [("fsync", 1), ("pwrite", int(rng.integers(1, 6))), ("replace", int(rng.integers(1, 6))),
             ("renamed", int(rng.integers(1, 6))), ("fsync", int(rng.integers(2, 8)))]
    out = tmp_path / "out"
    for kill in kills:
        p = child(inp, out, tiny, kill)
        assert p.wait(300) == -signal.SIGKILL, f"the run to be killed at {kill} ended by itself: " + \
            p.stderr.read().decode()[-500:]
    assert 0 < n_done(out) < 24
    p = child(inp, out, tiny)
    assert p.wait(300) == 0, p.stderr.read().decode()
    want, got = files_of(tmp_path / "ref"), files_of(out)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], f"{name} differs after the kills {kills}"


def test_a_chunk_not_marked_done_is_rewritten(tmp_path, model):
    """Rows written but no done mark (a kill between the write and the mark): the next run redoes
    the chunk; and an OUT without a manifest (a kill during setup) starts over."""
    texts = sentences(300)
    ref = corpus.embed_corpus(model, _write(tmp_path / "in.txt", texts), tmp_path / "out", chunk_rows=64)
    want = files_of(tmp_path / "out")
    emb = np.load(tmp_path / "out" / "embeddings.npy", mmap_mode="r+")
    emb[64:128] = np.nan  # a half-written chunk
    emb.flush()
    del emb
    (tmp_path / "out" / "done" / "00000001").unlink()
    s = corpus.embed_corpus(model, tmp_path / "in.txt", tmp_path / "out", chunk_rows=64)
    assert s["resumed_chunks"] == ref["chunks"] - 1
    assert files_of(tmp_path / "out") == want
    (tmp_path / "out" / "manifest.json").unlink()
    corpus.embed_corpus(model, tmp_path / "in.txt", tmp_path / "out", chunk_rows=64)
    assert files_of(tmp_path / "out") == want


def _write(path, lines, end="\n"):
    Path(path).write_text("\n".join(lines) + end, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------
# inputs: text, JSON Lines with ids, blank lines, invalid UTF-8, truncation


def test_text_file_rows_are_the_lines_in_order(tmp_path, model, capsys, tiny):
    texts = sentences(200)
    inp = _write(tmp_path / "in.txt", texts, end="")  # no newline at the end: still an item
    code, err = embed_cli(capsys, "--input", inp, "--output", tmp_path / "out", "--model", tiny,
                          "--chunk-size", 50, "--batch-size", 7)
    assert code == 0, err
    emb = np.load(tmp_path / "out" / "embeddings.npy")
    np.testing.assert_allclose(emb, model.embed(texts), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-6)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (m["count"], m["dims"], len(m["chunks"]), m["chunk_rows"]) == (200, 16, 4, 50)
    assert m["input"]["size"] == inp.stat().st_size and len(m["input"]["sha256"]) == 64
    assert [t for t, _ in corpus.items(m, np.load(tmp_path / "out" / "offsets.npy"))] == texts
    assert "embedded 200 items (16 dims)" in err


def test_jsonl_with_ids(tmp_path, model, capsys, tiny):
    texts = sentences(30)
    rows = [{"id": f"doc-{i}" if i % 2 else i, "body": t, "extra": [1, 2]} for i, t in enumerate(texts)]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, err = embed_cli(capsys, "--input", inp, "--output", tmp_path / "out", "--field", "body",
                          "--model", tiny)
    assert code == 0, err
    ids = [json.loads(line) for line in (tmp_path / "out" / "ids.jsonl").read_text().splitlines()]
    assert ids == [r["id"] for r in rows]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "embeddings.npy"), model.embed(texts), atol=1e-6)
    # without ids: no ids.jsonl
    inp.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    code, err = embed_cli(capsys, "--input", inp, "--output", tmp_path / "out2", "--field", "body",
                          "--model", tiny)
    assert code == 0 and not (tmp_path / "out2" / "ids.jsonl").exists()


@needs_minilm
def test_blank_lines_are_the_empty_text_or_skipped(tmp_path, capsys):
    """MiniLM's tokenizer gives a blank line [CLS] [SEP]: it is embedded as the empty text."""
    from qkv.io import find_minilm

    minilm = Encoder.from_pretrained(find_minilm())
    lines = ["a cat", "", "  ", "a dog", "", "the end"]
    inp = _write(tmp_path / "in.txt", lines)
    assert embed_cli(capsys, "--input", inp, "--output", tmp_path / "all")[0] == 0
    emb = np.load(tmp_path / "all" / "embeddings.npy")
    assert emb.shape == (6, 384)
    np.testing.assert_allclose(emb[[1, 2, 4]], minilm.embed(["", "  ", ""]), atol=1e-6)
    assert embed_cli(capsys, "--input", inp, "--output", tmp_path / "skip", "--skip-empty")[0] == 0
    emb = np.load(tmp_path / "skip" / "embeddings.npy")
    np.testing.assert_allclose(emb, minilm.embed(["a cat", "a dog", "the end"]), atol=1e-6)
    m = json.loads((tmp_path / "skip" / "manifest.json").read_text())
    assert [t for t, _ in corpus.items(m, np.load(tmp_path / "skip" / "offsets.npy"))] == ["a cat", "a dog", "the end"]


def test_a_blank_line_without_tokens_names_the_item(tmp_path, capsys, tiny):
    """The tiny model's tokenizer adds no special tokens: a blank line has no embedding."""
    inp = _write(tmp_path / "in.txt", ["a cat", "a dog", "", "the end"])
    code, err = embed_cli(capsys, "--input", inp, "--output", tmp_path / "out", "--model", tiny)
    assert code == 2 and err.count("\n") == 1 and "item 2 ('') gives no tokens" in err and "--skip-empty" in err
    code, err = embed_cli(capsys, "--input", inp, "--output", tmp_path / "out", "--model", tiny, "--skip-empty")
    assert code == 0, err
    assert np.load(tmp_path / "out" / "embeddings.npy").shape == (3, 16)


def test_invalid_utf8_names_the_line_or_is_replaced(tmp_path, model, capsys, tiny):
    inp = tmp_path / "in.txt"
    inp.write_bytes(b"good line\nanother\nbad \xff byte\nfine\n")
    code, err = embed_cli(capsys, "--input", inp, "--output", tmp_path / "out", "--model", tiny)
    assert code == 2 and err.count("\n") == 1
    assert "line 3: invalid UTF-8 (byte 0xff at column 5)" in err and "--errors replace" in err
    code, err = embed_cli(capsys, "--input", inp, "--output", tmp_path / "out", "--model", tiny,
                          "--errors", "replace")
    assert code == 0, err
    emb = np.load(tmp_path / "out" / "embeddings.npy")
    np.testing.assert_allclose(emb[2], model.embed(["bad \ufffd byte"])[0], atol=1e-6)


def test_truncation_warning_counts_the_long_texts(tmp_path, model, capsys, tiny):
    long = " ".join(["hills"] * 100)  # far over the tiny model's 64 positions
    texts = sentences(40)
    for i in (3, 17, 18, 39):
        texts[i] = long
    inp = _write(tmp_path / "in.txt", texts)
    code, err = embed_cli(capsys, "--input", inp, "--output", tmp_path / "out", "--model", tiny,
                          "--chunk-size", 16)
    assert code == 0
    assert "warning: 4 of 40 texts are longer than 64 tokens and were truncated" in err
    # a resumed run still reports the whole job (the counts live in the done files)
    (tmp_path / "out" / "done" / "00000000").unlink()
    code, err = embed_cli(capsys, "--input", inp, "--output", tmp_path / "out", "--model", tiny,
                          "--chunk-size", 16)
    assert code == 0 and "warning: 4 of 40 texts" in err and "2 of 3 chunks were already done" in err


# ----------------------------------------------------------------------------
# bad input: one line, exit 2, and an OUT that holds another job is left as it was


BAD_JSONL = [
    ('{"text": "a"}\n{"body": "b"}\n', "line 2: no 'text' field"),
    ('{"text": "a"}\nnot json\n', "line 2: not JSON"),
    ('{"text": "a"}\n[1, 2]\n', "line 2: a JSON list, expected an object with a 'text' field"),
    ('{"text": 5}\n', "line 1: field 'text' is a int, expected a string"),
    ('{"text": "a"}\n\n', "line 2: blank line in JSON Lines input (pass --skip-empty"),
    ('{"text": "a", "id": 1}\n{"text": "b"}\n', "line 2: no 'id' field, but line 1 has one"),
]


@pytest.mark.parametrize("content, message", BAD_JSONL)
def test_bad_jsonl_is_one_line_exit_2(tmp_path, model, capsys, content, message, tiny):
    inp = tmp_path / "in.jsonl"
    inp.write_text(content)
    code, err = embed_cli(capsys, "--input", inp, "--output", tmp_path / "out", "--field", "text",
                          "--model", tiny)
    assert code == 2 and err.startswith("qkv embed: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_bad_arguments_are_one_line_exit_2(tmp_path, model, capsys, tiny):
    good = _write(tmp_path / "in.txt", ["a", "b"])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    f = tiny
    cases = [
        (["--input", tmp_path / "missing.txt", "--output", tmp_path / "o1", "--model", f], "missing.txt: no such file"),
        (["--input", tmp_path, "--output", tmp_path / "o2", "--model", f], "is a folder, give a file"),
        (["--input", empty, "--output", tmp_path / "o3", "--model", f], "empty.txt has no items"),
        (["--input", good, "--output", tmp_path / "a_file", "--model", f], "is a file; give a folder"),
        (["--input", good, "--output", tmp_path / "busy", "--model", f], "holds other files (notes.txt)"),
        (["--input", good, "--model", f], "--input needs --output"),
        (["--output", tmp_path / "o4", "--model", f], "give --input FILE too"),
        (["hello", "--input", good, "--output", tmp_path / "o5", "--model", f], "not both"),
        (["--input", good, "--output", tmp_path / "o5", "--model", f, "--quantize", "int8"], "--quantize is for TEXT"),
        (["--input", good, "--output", tmp_path / "o6", "--model", f, "--dask", "local:0"], "local:N"),
        (["--input", good, "--output", tmp_path / "o6", "--model", f, "--dask", "many"], "scheduler address"),
    ]
    try:
        import distributed  # noqa: F401
    except ImportError:  # without Dask, --dask says how to get it instead
        cases[-2:] = [(cases[-1][0], 'pip install "qkv[dask]"')]
    for argv, message in cases:
        code, err = embed_cli(capsys, *argv)
        assert code == 2 and err.startswith("qkv embed: error: ") and err.count("\n") == 1, (argv, err)
        assert message in err, (argv, err)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_an_out_for_another_input_is_refused_unless_overwrite(tmp_path, model, capsys, tiny):
    a = _write(tmp_path / "a.txt", sentences(20, seed=1))
    b = _write(tmp_path / "b.txt", sentences(20, seed=2))
    f = tiny
    assert embed_cli(capsys, "--input", a, "--output", tmp_path / "out", "--model", f)[0] == 0
    before = files_of(tmp_path / "out")
    for argv in (["--input", b], ["--input", a, "--chunk-size", 5], ["--input", a, "--skip-empty"]):
        code, err = embed_cli(capsys, *argv, "--output", tmp_path / "out", "--model", f)
        assert code == 2 and "holds embeddings of another job" in err and "--overwrite" in err, err
        assert files_of(tmp_path / "out") == before  # nothing lost
    code, err = embed_cli(capsys, "--input", b, "--output", tmp_path / "out", "--model", f, "--overwrite")
    assert code == 0
    np.testing.assert_allclose(np.load(tmp_path / "out" / "embeddings.npy"), model.embed(sentences(20, seed=2)),
                               atol=1e-6)


def test_a_cli_error_prints_no_traceback(tmp_path, tiny):
    inp = tmp_path / "in.txt"
    inp.write_bytes(b"ok\n\xc3\x28\n")
    r = subprocess.run([sys.executable, "-m", "qkv", "embed", "--input", str(inp), "--output", str(tmp_path / "o"),
                        "--model", tiny], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "line 2: invalid UTF-8" in r.stderr, r.stderr


# ----------------------------------------------------------------------------
# the Python API


def test_encoder_embed_corpus_of_an_iterable(tmp_path, model):
    texts = sentences(70)
    emb = model.embed_corpus(iter(texts), tmp_path / "out", batch_size=8, chunk_rows=32)
    assert isinstance(emb, np.memmap) and emb.shape == (70, 16) and not emb.flags.writeable
    np.testing.assert_allclose(emb, model.embed(texts), atol=1e-6)
    before = files_of(tmp_path / "out")
    model.embed_corpus(texts, tmp_path / "out", chunk_rows=32)  # the same job again: nothing to do
    assert files_of(tmp_path / "out") == before
    with pytest.raises(ValueError, match="holds embeddings of other texts"):
        model.embed_corpus(texts[:5], tmp_path / "out", chunk_rows=32)
    assert files_of(tmp_path / "out") == before
    emb = model.embed_corpus(texts[:5], tmp_path / "out", chunk_rows=32, overwrite=True)
    np.testing.assert_allclose(emb, model.embed(texts[:5]), atol=1e-6)
    with pytest.raises(TypeError, match="not a single str"):
        model.embed_corpus("one text", tmp_path / "o2")
    with pytest.raises(TypeError, match="item 1 is a int"):
        model.embed_corpus(["a", 1], tmp_path / "o3")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.embed_corpus(texts, tmp_path / "o4", batch_size=0)


def test_progress_bar_when_forced(tmp_path, model, capsys, monkeypatch, tiny):
    monkeypatch.setenv("QKV_PROGRESS", "1")
    inp = _write(tmp_path / "in.txt", sentences(50))
    code, err = embed_cli(capsys, "--input", inp, "--output", tmp_path / "out", "--model", tiny,
                          "--chunk-size", 10)
    assert code == 0 and "embed:" in err and "/50" in err and "scan:" in err
