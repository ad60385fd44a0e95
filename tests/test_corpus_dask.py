"""Embedding a corpus on a Dask LocalCluster of 2 single-threaded workers (qkv.corpus_dask): the
same bytes as this process on one thread, and a worker SIGKILLed as it starts a task loses
nothing and duplicates nothing. Skipped without Dask (pip install ".[dask]"; CI's
.ci/steps/25-dask.sh runs it)."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import qkv  # noqa: E402
from qkv import corpus  # noqa: E402
from qkv.cli import main  # noqa: E402
from qkv.nn import Encoder  # noqa: E402
from test_corpus import files_of, sentences  # noqa: E402
from test_cli_models import tiny_bert  # noqa: E402

N, CHUNK = 1200, 50  # 24 chunks


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The tiny model, an input, and the single-process result on one thread (the workers' count)."""
    root = tmp_path_factory.mktemp("dask")
    folder = tiny_bert(root / "bert")
    inp = root / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(sentences(N, max_words=30))))
    model = Encoder.from_pretrained(folder)
    threads = qkv.get_num_threads()
    qkv.set_num_threads(1)
    try:
        corpus.embed_corpus(model, inp, root / "ref", field="text", chunk_rows=CHUNK)
    finally:
        qkv.set_num_threads(threads)
    return {"folder": folder, "input": inp, "model": model, "ref": files_of(root / "ref")}


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        with distributed.Client(cl) as c:
            yield c


def same_job(got, want):
    """Every file equal; the manifests up to the input path and the model's name and folder."""
    assert sorted(got) == sorted(want)
    for name in want:
        if name != "manifest.json":
            assert got[name] == want[name], name
    a, b = json.loads(got["manifest.json"]), json.loads(want["manifest.json"])
    for m in (a, b):
        m["input"].pop("path")
        m["model"].pop("name"), m["model"].pop("folder")
    assert a == b


def test_local_cluster_equals_one_process(job, tmp_path, capsys):
    code = main(["embed", "--input", str(job["input"]), "--output", str(tmp_path / "out"), "--field", "text",
                 "--model", job["folder"], "--chunk-size", str(CHUNK), "--dask", "local:2"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"embedded {N} items" in err
    same_job(files_of(tmp_path / "out"), job["ref"])


class KillOnce(distributed.WorkerPlugin):
    """SIGKILLs its worker when the worker starts its `nth` chunk task, once per cluster (the
    marker file); the nanny then starts a fresh worker and Dask reschedules the lost tasks."""

    name = "kill-once"

    def __init__(self, marker, nth=3):
        self.marker, self.nth, self.seen = str(marker), nth, 0

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and str(key).startswith("qkv-chunk-"):
            self.seen += 1
            if self.seen == self.nth:
                try:
                    os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    return
                os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(job, tmp_path, client):
    marker = tmp_path / "killed"
    client.register_plugin(KillOnce(marker))
    pids_before = set(client.run(os.getpid).values())
    s = corpus.embed_corpus(job["model"], job["input"], tmp_path / "out", field="text", chunk_rows=CHUNK,
                            dask=client, model_folder=job["folder"])
    assert marker.exists(), "no worker was killed"
    assert set(client.run(os.getpid).values()) != pids_before  # a fresh worker took the dead one's place
    assert (s["count"], s["chunks"], s["resumed_chunks"]) == (N, N // CHUNK, 0)
    same_job(files_of(tmp_path / "out"), job["ref"])  # every row, once: the same bytes as one process
    done = sorted(p.name for p in Path(tmp_path / "out" / "done").iterdir())
    assert done == [f"{i:08d}" for i in range(N // CHUNK)]


def test_a_worker_with_other_weights_fails_loudly(job, tmp_path, client):
    other = tiny_bert(tmp_path / "other", layer_norm_eps=1e-6)  # other config, so another fingerprint
    with pytest.raises(corpus.CorpusError, match="differs from the one this job was started with"):
        corpus.embed_corpus(job["model"], job["input"], tmp_path / "out", field="text", chunk_rows=CHUNK,
                            dask=client, model_folder=other)
    assert not list((tmp_path / "out" / "done").iterdir())
