"""Embedding a corpus on a Dask cluster (``pip install "qkv[dask]"``): qkv.corpus's chunks become
Dask tasks; everything else (scan, manifest, done files, resume) is qkv.corpus's, unchanged.

- ``local:N`` starts a LocalCluster of N worker processes, one thread each; any other spec is a
  scheduler address (``tcp://HOST:8786``) of a cluster started by ``dask scheduler`` and
  ``dask worker`` on each machine.
- A worker plugin loads the model once per worker (not once per task) and checks its fingerprint
  against the manifest's, so a machine with other weights fails loudly instead of writing other
  vectors.
- A task carries a chunk's index and byte range only: each worker reads its bytes of the input
  and writes its rows straight into OUT/embeddings.npy. So the input and OUT must sit on a
  filesystem every worker sees at the same path (NFS, Lustre, ...).
- A worker that dies mid-task (killed, out of memory, machine lost) has its tasks rescheduled by
  Dask on the others. Its chunk was not marked done (the mark comes only after the rows are
  fsync'd), so the new run of the task rewrites the whole chunk; a chunk run twice writes the same
  bytes twice. Nothing is lost or duplicated.
"""

import hashlib
import json
import uuid

from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker

from qkv.corpus import CorpusError, embed_chunk, model_fingerprint


class EncoderPlugin(WorkerPlugin):
    """Loads the Encoder from `folder` once when a worker joins (or restarts). Idempotent: a later
    job with the same model on the same cluster finds it loaded (the name holds the fingerprint and
    the folder)."""

    idempotent = True

    def __init__(self, folder, fingerprint, threads=1):
        self.folder, self.fingerprint, self.threads = str(folder), fingerprint, threads
        self.name = f"qkv-encoder-{fingerprint}-{hashlib.sha256(self.folder.encode()).hexdigest()[:8]}"
        self.model = self.error = None

    def setup(self, worker):
        import qkv
        from qkv.nn import Encoder

        qkv.set_num_threads(self.threads)
        try:
            model = Encoder.from_pretrained(self.folder)
        except (OSError, ValueError) as exc:
            self.error = f"worker {worker.address}: cannot load the model {self.folder}: {exc}"
            return
        if model_fingerprint(model) != self.fingerprint:
            self.error = (f"worker {worker.address}: the model at {self.folder} differs from the one "
                          f"this job was started with")
            return
        self.model = model


def _chunk_task(plugin_name, out, i, chunk, opts, batch_size):
    plugin = get_worker().plugins[plugin_name]
    if plugin.model is None:
        raise CorpusError(plugin.error or "the worker has no model")
    return i, embed_chunk(plugin.model, out, i, chunk, opts, batch_size)


def parse_spec(spec):
    """'local:N' -> ('local', N); a scheduler address -> ('address', spec); else ValueError."""
    if spec.startswith("local:"):
        n = spec[len("local:"):]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--dask local:N needs a worker count N >= 1, got {spec!r}")
        return "local", int(n)
    if "://" in spec:
        return "address", spec
    raise ValueError(f"--dask takes local:N or a scheduler address such as tcp://HOST:8786, got {spec!r}")


def connect(spec):
    """A Client, and the LocalCluster it owns (None for an existing scheduler)."""
    kind, arg = parse_spec(spec)
    if kind == "local":
        cluster = LocalCluster(n_workers=arg, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster), cluster
    try:
        return Client(arg, timeout="20s"), None
    except OSError as exc:
        raise CorpusError(f"--dask {arg}: cannot reach the scheduler ({exc})") from None


def run_chunks(spec, folder, fingerprint, out, todo, chunks, opts, batch_size):
    """Run the chunks `todo` on the cluster `spec` (a spec string, or a Client to use as it is);
    yields (chunk index, stats) as each finishes."""
    own = isinstance(spec, str)
    client, cluster = connect(spec) if own else (spec, None)
    try:
        plugin = EncoderPlugin(folder, fingerprint)
        client.register_plugin(plugin)
        opts = json.loads(json.dumps(opts))  # plain data only travels with the tasks
        run = uuid.uuid4().hex[:8]
        futures = [client.submit(_chunk_task, plugin.name, str(out), i, chunks[i], opts, batch_size,
                                 key=f"qkv-chunk-{run}-{i}")
                   for i in todo]
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
