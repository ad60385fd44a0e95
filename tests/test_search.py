"""``qkv search OUT "query"``: exact cosine over an embedded corpus, in blocks (qkv.corpus.top_k);
the paraphrase of a query is its top hit with all-MiniLM-L6-v2; bad OUTs end in one line, exit 2."""

import json

import numpy as np
import pytest

from conftest import needs_minilm
from qkv import corpus
from qkv.cli import main
from test_cli_models import tiny_bert

CORPUS = [
    "The stock market fell sharply after the interest rate announcement.",
    "A recipe for chocolate chip cookies with brown butter.",
    "The spacecraft entered orbit around Mars after a seven month journey.",
    "How do I reset my password if I forgot my email address?",
    "The football team won the championship in overtime.",
    "Heavy rain is expected across the region this weekend.",
    "Python lists can be sorted in place with the sort method.",
    "The museum opens a new exhibition of impressionist paintings.",
    "A cat is sleeping on the warm windowsill in the sun.",
    "Doctors recommend at least seven hours of sleep each night.",
]


@pytest.mark.parametrize("block", [1, 3, 7, 1000])
def test_top_k_equals_a_full_sort(block):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((50, 8)).astype(np.float32)
    emb[[4, 9]] = emb[17]  # ties: the lower row first
    q = rng.standard_normal(8).astype(np.float32)
    rows, scores = corpus.top_k(emb, q, 10, block=block)
    full = emb @ q
    want = np.lexsort((np.arange(50), -full))[:10]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(scores, full[want], rtol=1e-6)
    assert len(corpus.top_k(emb, q, 500, block=block)[0]) == 50


@needs_minilm
def test_the_paraphrase_is_the_top_hit(tmp_path, capsys):
    inp = tmp_path / "docs.jsonl"
    inp.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(CORPUS)))
    assert main(["embed", "--input", str(inp), "--output", str(tmp_path / "out"), "--field", "text"]) == 0
    capsys.readouterr()
    for query, want in [("my kitty is napping by the window", 8), ("how much should adults sleep", 9),
                        ("probe reaches the red planet", 2)]:
        assert main(["search", str(tmp_path / "out"), query, "-k", "3", "--json"]) == 0
        hits = json.loads(capsys.readouterr().out)
        assert [h["rank"] for h in hits] == [1, 2, 3]
        assert hits[0]["row"] == want and hits[0]["id"] == f"d{want}" and hits[0]["text"] == CORPUS[want], hits
        assert hits[0]["score"] > hits[1]["score"] > 0
    assert main(["search", str(tmp_path / "out"), "a cat sleeping in the sun", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("  1  0.") and lines[0].endswith("[d8] " + CORPUS[8])


def test_bad_outs_are_one_line_exit_2(tmp_path, capsys):
    tiny = tiny_bert(tmp_path / "bert")
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(CORPUS) + "\n")
    assert main(["embed", "--input", str(inp), "--output", str(tmp_path / "out"), "--model", tiny,
                 "--chunk-size", "4"]) == 0
    (tmp_path / "plain").mkdir()
    cases = [([str(tmp_path / "nowhere"), "q"], "no such folder"),
             ([str(tmp_path / "plain"), "q"], "has no manifest.json"),
             ([str(tmp_path / "out"), "   "], "non-empty QUERY")]
    capsys.readouterr()
    for argv, message in cases:
        assert main(["search", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
    # the input changed since: rows only, with a warning
    inp.write_text("other\n")
    assert main(["search", str(tmp_path / "out"), "cat", "-k", "2"]) == 0
    out, err = capsys.readouterr()
    assert "gone or changed" in err and out.splitlines()[0].split()[2] == "row"
    # an unfinished OUT says how to finish it
    (tmp_path / "out" / "done" / "00000001").unlink()
    assert main(["search", str(tmp_path / "out"), "cat"]) == 2
    assert "unfinished (2 of 3 chunks done); re-run the same qkv embed command" in capsys.readouterr().err
