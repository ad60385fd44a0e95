"""Batched generation: prompts of different lengths (a list, or left-padded ids + attention_mask)
give each row what it gets alone and what transformers' generate gives (fixture written by
tests/fixtures/make_fixtures.py); eos stopping; seeded sampling; bad input; `qkv generate` streaming."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import qkv
from qkv.cli import main
from qkv.io.checkpoint import read_eos_token_id
from qkv.nn import GPT

FIX = Path(__file__).parent / "fixtures"
TINY = FIX / "tiny_gpt2"
PROMPTS = [[33], [293, 279, 258], [290, 286, 268, 79, 86, 261, 221]]  # lengths 1, 3, 7


@pytest.fixture(scope="module")
def model():
    return GPT.from_pretrained(TINY)


def left_pad(prompts, pad=0):
    L = max(map(len, prompts))
    ids = np.full((len(prompts), L), pad, dtype=np.int64)
    mask = np.zeros((len(prompts), L), dtype=np.int64)
    for r, p in enumerate(prompts):
        ids[r, L - len(p):], mask[r, L - len(p):] = p, 1
    return ids, mask


@pytest.mark.parametrize("backend_name", ["cpu", "numpy"])
def test_greedy_batch_equals_each_prompt_alone(model, backend_name):
    with qkv.use_backend(backend_name):
        batch = model.generate(PROMPTS, 12, top_k=1)
        alone = [model.generate(np.array([p]), 12, top_k=1)[0].tolist() for p in PROMPTS]
        ids, mask = left_pad(PROMPTS, pad=7)
        padded = model.generate(ids, 12, top_k=1, attention_mask=mask)
    assert isinstance(batch, list) and batch == alone
    assert padded.shape == (3, 7 + 12) and padded.dtype == np.int64
    np.testing.assert_array_equal(padded[:, :7], ids)  # the ids as given, padding included
    for r, p in enumerate(PROMPTS):
        assert padded[r, 7 - len(p):].tolist() == alone[r]


def test_greedy_batch_matches_transformers(model):
    r = np.load(FIX / "tiny_gpt2_batch.npz")
    np.testing.assert_array_equal(r["attention_mask"], left_pad(PROMPTS)[1])
    out = model.generate(r["ids"], 12, top_k=1, attention_mask=r["attention_mask"], eos_token_id=None)
    np.testing.assert_array_equal(out, r["greedy"])
    eos = int(r["eos_token_id"])  # ends row 0 first, row 2 last, row 1 never: finished rows padded with eos
    out = model.generate(r["ids"], 12, top_k=1, attention_mask=r["attention_mask"], eos_token_id=eos)
    np.testing.assert_array_equal(out, r["greedy_eos"])


def test_a_padded_mask_with_a_bool_dtype_and_extra_padding_columns(model):
    ids, mask = left_pad(PROMPTS)
    wide = np.concatenate([np.zeros((3, 2), np.int64), ids], axis=1)  # 2 columns of padding in every row
    wmask = np.concatenate([np.zeros((3, 2), bool), mask.astype(bool)], axis=1)
    out = model.generate(wide, 5, top_k=1, attention_mask=wmask)
    np.testing.assert_array_equal(out[:, 2:], model.generate(ids, 5, top_k=1, attention_mask=mask))


def test_eos_stops_each_row_and_generation_early(model):
    free = model.generate(PROMPTS, 12, top_k=1, eos_token_id=None)
    new = [row[len(p):] for row, p in zip(free, PROMPTS)]
    eos = sorted({row[i] for row, i in zip(new, (5, 0, 2))})  # two or three ids that end every row
    ends = [min(i for i, t in enumerate(row) if t in eos) for row in new]
    assert len(set(ends)) > 1 and max(ends) < 11, ends  # the rows end at different steps, all early
    rows = model.generate(PROMPTS, 12, top_k=1, eos_token_id=eos)
    assert rows == [f[:len(p) + e + 1] for f, p, e in zip(free, PROMPTS, ends)]  # up to and including eos
    ids, mask = left_pad(PROMPTS)
    out = model.generate(ids, 12, top_k=1, attention_mask=mask, eos_token_id=eos, pad_token_id=-1)
    assert out.shape == (3, 7 + max(ends) + 1)  # stopped when the last row ended
    for r, e in enumerate(ends):
        assert out[r, 7:].tolist() == new[r][:e + 1] + [-1] * (max(ends) - e)
    steps = list(model.generate_stream(PROMPTS, 12, top_k=1, eos_token_id=eos))
    assert len(steps) == max(ends) + 1 and steps[-1].shape == (3,)


def test_eos_token_id_is_read_from_the_checkpoint(model, tmp_path):
    assert model.eos_token_id is None  # the fixture's 50256 lies outside its 300-token vocabulary
    folder = tmp_path / "m"
    shutil.copytree(TINY, folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 160}))
    assert read_eos_token_id(folder) == 160
    m = GPT.from_pretrained(folder)
    assert m.eos_token_id == 160
    rows = m.generate(PROMPTS, 12, top_k=1)  # the checkpoint's eos is the default
    assert rows == model.generate(PROMPTS, 12, top_k=1, eos_token_id=160) and rows[1] == PROMPTS[1] + [160]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [50256, 160, 12]}))
    assert GPT.from_pretrained(folder).eos_token_id == [160, 12]
    (folder / "generation_config.json").unlink()  # then config.json's
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "eos_token_id": 5}))
    assert read_eos_token_id(folder) == 5
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": "x"}))
    with pytest.raises(ValueError, match="generation_config.json: eos_token_id must be"):
        GPT.from_pretrained(folder)
    (folder / "generation_config.json").write_text("{")
    with pytest.raises(ValueError, match="generation_config.json is not valid JSON"):
        read_eos_token_id(folder)


def test_seeded_sampling_is_reproducible(model):
    kw = dict(temperature=0.9, top_k=50, seed=11)
    a = model.generate(PROMPTS, 10, **kw)
    assert a == model.generate(PROMPTS, 10, **kw)
    assert a != model.generate(PROMPTS, 10, **{**kw, "seed": 12})
    assert model.generate(PROMPTS[:1], 10, **kw) == a[:1]  # row 0 is the prompt alone
    # row r draws from its own stream: its tokens do not depend on the other rows
    other = model.generate([[5, 6, 7], PROMPTS[1], PROMPTS[2]], 10, **kw)
    assert other[1:] == a[1:]
    ids, mask = left_pad(PROMPTS)
    np.testing.assert_array_equal(model.generate(ids, 10, attention_mask=mask, **kw)[2, 7:], a[2][7:])


def test_generate_stream_yields_the_tokens_of_generate(model):
    ids, mask = left_pad(PROMPTS)
    steps = model.generate_stream(ids, 6, top_k=1, attention_mask=mask)
    out = model.generate(ids, 6, top_k=1, attention_mask=mask)
    np.testing.assert_array_equal(np.stack(list(steps), axis=1), out[:, 7:])
    with pytest.raises(ValueError, match="attention_mask"):  # checked at the call, before the first step
        model.generate_stream(ids, 6, attention_mask=mask[:, 1:])


def test_bad_inputs_name_the_argument(model):
    ids, mask = left_pad(PROMPTS)
    cases = [
        (dict(ids=[[1, 2], []]), r"ids\[1\] is empty"),
        (dict(ids=[[1, 2], [0.5]]), r"ids\[1\] must hold integer token ids"),
        (dict(ids=[[1, 2], [3]], attention_mask=np.ones((2, 2))), "attention_mask goes with an array"),
        (dict(ids=ids, attention_mask=mask[:, 1:]),
         r"attention_mask must have the shape of ids \(3, 7\), got \(3, 6\)"),
        (dict(ids=ids, attention_mask=mask[None]), "attention_mask must have the shape of ids"),
        (dict(ids=ids, attention_mask=np.array([[1, 0, 1, 1, 1, 1, 1]] * 3)),
         "attention_mask row 0 is not left padding"),
        (dict(ids=ids, attention_mask=mask[:, ::-1]), "attention_mask row 0 is not left padding"),
        (dict(ids=ids, attention_mask=mask * 2), "attention_mask must hold only 0"),
        (dict(ids=ids, attention_mask=np.where(np.arange(3)[:, None] == 1, 0, mask)), "attention_mask row 1 is all 0"),
        (dict(ids=ids, eos_token_id=300), "eos_token_id must be None, a token id"),
        (dict(ids=ids, eos_token_id=[1, "x"]), "eos_token_id must be None, a token id"),
        (dict(ids=ids, pad_token_id=1.5), "pad_token_id must be an int"),
        (dict(ids=[[1] * 40, [2]], max_new_tokens=9), "40 prompt tokens \\+ 9 new ones exceed the context of 48"),
        (dict(ids=[[1] * 49, [2]]), "the longest prompt has 49 tokens but the context is 48"),
        (dict(ids=[[1, 400]]), "token ids must lie in"),
    ]
    for kw, msg in cases:
        kw.setdefault("max_new_tokens", 3)
        with pytest.raises(ValueError, match=msg):
            model.generate(**kw)


def test_single_prompt_path_passes_no_mask(model, monkeypatch):
    """Unpadded prompts take today's path: no mask, no position ids (nothing extra per step)."""
    seen = []
    forward = GPT._forward

    def spy(self, *a, **kw):
        seen.append(a[5:])
        return forward(self, *a, **kw)

    monkeypatch.setattr(GPT, "_forward", spy)
    model.generate(np.array([[1, 2, 3], [4, 5, 6]]), 4, top_k=1)
    assert len(seen) == 4 and all(extra[1:] == (None, None) for extra in seen)


class Writes:
    """A stdout that records, per write, how many generation steps had run."""

    def __init__(self, counter):
        self.counter, self.writes = counter, []

    def write(self, s):
        self.writes.append((self.counter[0], s))

    def flush(self):
        pass


def test_cli_streams_tokens_as_they_come(model, monkeypatch, capsys):
    counter = [0]
    stream = GPT.generate_stream

    def counted(self, *a, **kw):
        for step in stream(self, *a, **kw):
            counter[0] += 1
            yield step

    monkeypatch.setattr(GPT, "generate_stream", counted)
    out = Writes(counter)
    monkeypatch.setattr(sys, "stdout", out)
    argv = ["generate", "--model", str(TINY), "--prompt", "qkv makes", "--max-new-tokens", "8", "--top-k", "1"]
    assert main(argv) == 0
    steps_seen = [n for n, s in out.writes if s.strip()]
    assert steps_seen == list(range(9)), out.writes  # the prompt before the prefill, then a piece per token
    assert out.writes[0] == (0, "qkv makes")
    ids = model.tokenizer.encode("qkv makes").ids
    expected = model.tokenizer.decode(model.generate(np.array([ids]), 8, top_k=1)[0].tolist())
    assert "".join(s for _, s in out.writes) == expected + "\n"
    err = capsys.readouterr().err
    assert "prefill: 6 tokens in" in err and "; decode: 7 tokens in" in err and "tokens/s" in err


def test_cli_batch_of_prompts(model, capsys):
    assert main(["generate", "--model", str(TINY), "--prompt", "The cat", "--prompt", "Attention moves meaning",
                 "--max-new-tokens", "5", "--top-k", "1"]) == 0
    cap = capsys.readouterr()
    texts = []
    for p in ("The cat", "Attention moves meaning"):
        ids = model.tokenizer.encode(p).ids
        texts.append(model.tokenizer.decode(model.generate(np.array([ids]), 5, top_k=1)[0].tolist()))
    assert cap.out == "\n\n".join(texts) + "\n"
    assert "prefill:" in cap.err and "decode:" in cap.err
    assert main(["generate", "--model", str(TINY), "--prompt", "hi", "--prompt", " ", "--max-new-tokens", "2"]) == 2
    assert "prompt is empty" in capsys.readouterr().err


def test_text_stream_holds_back_a_split_character(model):
    from qkv.commands.generate import TextStream

    class Out:
        text = ""

        def write(self, s):
            Out.text += s

        def flush(self):
            pass

    ids = model.tokenizer.encode("a é").ids  # é is two byte-level tokens here
    assert model.tokenizer.decode(ids[:-1]).endswith("\ufffd")
    s = TextStream(model.tokenizer, Out())
    pieces = []
    for n in range(1, len(ids) + 1):
        before = Out.text
        s.update(ids[:n])
        pieces.append(Out.text[len(before):])
    assert "".join(pieces) == "a é" and "\ufffd" not in Out.text and pieces[-1].endswith("é")
