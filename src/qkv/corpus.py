"""Embedding a corpus: a file of many texts (one a line, or JSON Lines) into OUT/embeddings.npy,
streaming (memory stays flat), resumable after a kill at any moment, on one machine or, through
qkv.corpus_dask, on a Dask cluster. ``qkv embed --input FILE --output OUT`` and
``Encoder.embed_corpus`` call embed_corpus() below; ``qkv search`` calls search().

The pipeline, in order:
  1. scan    one streaming pass over the input: check every line (UTF-8, JSON, the field), count
             the items, cut them into chunks of chunk_rows items (byte ranges of the input), hash
             the bytes. Writes offsets.npy, ids.jsonl, an empty embeddings.npy (N, C), and the
             manifest last, atomically. A re-run with the same input, model and options skips it.
  2. chunks  per chunk not yet done: read its byte range, parse its lines as the scan did, count
             the texts longer than the model's positions, embed (Encoder.embed sorts the chunk's
             texts by length and pads each batch to its longest only), write the (rows, C) block
             with one positioned write at its row offset, fsync, then mark the chunk done.
  3. finish  every chunk done: the truncation warning (counts kept in the done files, so a resumed
             run reports the whole job).

OUT holds:
  manifest.json   input (path, size, sha256), model (name, folder, fingerprint), dims, count,
                  chunk_rows, options, chunks [[byte_start, byte_end, row_start, rows], ...]
  embeddings.npy  (N, C) float32, L2-normalised; row i = item i of the input
  offsets.npy     (N,) int64, the byte offset of item i's line in the input (search prints items)
  ids.jsonl       item i's id, one JSON value a line (JSON Lines input whose items have ids)
  done/00000012   one file per finished chunk: {"rows": n, "truncated": k}

Why a chunk marked done is complete: its rows are written and fsync'd before its done file is
renamed into place, and a rename is atomic. A kill in between leaves the chunk not done, and the
next run rewrites it with the same bytes (the same texts, sort, batches and thread count give the
same floats). Rows go in with os.pwrite rather than through a shared memory map so that two
machines writing neighbouring chunks of a file on NFS never write back each other's pages.
"""

import hashlib
import io
import json
import os
import sys
import shutil
from pathlib import Path

import numpy as np

FORMAT = 1            # manifest version
# items per chunk: the unit of work, of resume, and the window sorted by length. A wider window pads
# less: on standard-library docstring sentences (20 tokens on average, a long tail) batches of 32
# sorted within 256 items pad to 1.48x the real tokens, within 1024 to 1.15x, and MiniLM embeds
# 105-124 items/s against 154 (2 threads, the quiet 2-core machine). 1024 items are about 7 s of work.
CHUNK_ROWS = 1024
SEARCH_BLOCK = 65536  # rows of embeddings.npy per matrix product in search (flat memory)
OURS = ("manifest.json", "embeddings.npy", "offsets.npy", "ids.jsonl", "done", "input.jsonl")  # what OUT may hold


class CorpusError(ValueError):
    """Bad input or an OUT that does not fit it: one line for the user, nothing written."""


# ----------------------------------------------------------------------------
# small atomic file helpers


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, data):
    """Write bytes to path so that a reader sees either the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _sha256(path, block=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(block):
            h.update(b)
    return h.hexdigest()


# ----------------------------------------------------------------------------
# the input: one item per line; how a line becomes a text is decided here, once


def parse_line(raw, lineno, opts, where):
    """One input line (bytes, without its newline) -> (text, id) or None to skip it."""
    errors = opts["errors"]
    try:
        line = raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{where} line {lineno}: invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                          f"{exc.start + 1}); pass --errors replace to read it as U+FFFD") from None
    if line.endswith("\r"):
        line = line[:-1]
    field = opts["field"]
    if field is None:
        if opts["skip_empty"] and not line.strip():
            return None
        return line, None
    if not line.strip():
        if opts["skip_empty"]:
            return None
        raise CorpusError(f"{where} line {lineno}: blank line in JSON Lines input (pass --skip-empty to skip it)")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{where} line {lineno}: not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise CorpusError(f"{where} line {lineno}: a JSON {type(obj).__name__}, expected an object with a {field!r} field")
    if field not in obj:
        raise CorpusError(f"{where} line {lineno}: no {field!r} field (keys: {', '.join(map(repr, list(obj)[:5]))})")
    text = obj[field]
    if not isinstance(text, str):
        raise CorpusError(f"{where} line {lineno}: field {field!r} is a {type(text).__name__}, expected a string")
    if opts["skip_empty"] and not text.strip():
        return None
    return text, obj.get(opts["id_field"], _NO_ID)


_NO_ID = object()


def scan(path, out, opts, chunk_rows, bar=None):
    """Pass 1 over the input: check every line, write OUT/offsets.npy (and ids.jsonl), return
    (count, chunks, sha256, has_ids). Streams: memory does not grow with the file."""
    where = str(path)
    h = hashlib.sha256()
    chunks = []  # [byte_start, byte_end, row_start, rows]
    count, pos, has_ids, first_id_line = 0, 0, None, 0
    ids_file = None
    buf = []  # offsets not yet written
    try:
        with open(path, "rb") as f, open(out / "offsets.tmp", "wb") as fo:
            for lineno, raw in enumerate(f, 1):
                h.update(raw)
                item = parse_line(raw[:-1] if raw.endswith(b"\n") else raw, lineno, opts, where)
                if item is not None:
                    item_id = item[1]
                    if opts["field"] is not None:
                        if has_ids is None:
                            has_ids, first_id_line = item_id is not _NO_ID, lineno
                            if has_ids:
                                ids_file = open(out / "ids.jsonl", "w", encoding="utf-8")
                        if has_ids != (item_id is not _NO_ID):
                            a, b = (lineno, first_id_line) if has_ids else (first_id_line, lineno)
                            raise CorpusError(f"{where} line {a}: no {opts['id_field']!r} field, but line {b} "
                                              f"has one (give every item an id, or none)")
                        if has_ids:
                            ids_file.write(json.dumps(item_id, ensure_ascii=False) + "\n")
                    if count % chunk_rows == 0:
                        if chunks:
                            chunks[-1][1] = pos
                        chunks.append([pos, None, count, 0])
                    chunks[-1][3] += 1
                    buf.append(pos)
                    count += 1
                    if len(buf) >= 65536:
                        fo.write(np.asarray(buf, np.int64).tobytes())
                        buf.clear()
                pos += len(raw)
                if bar is not None and lineno % 4096 == 0:
                    bar.update(pos - bar.n)
            fo.write(np.asarray(buf, np.int64).tobytes())
    finally:
        if ids_file is not None:
            ids_file.close()
    if count == 0:
        raise CorpusError(f"{where} has no items" + (" (after skipping blank ones)" if opts["skip_empty"] else ""))
    chunks[-1][1] = pos
    if os.path.getsize(path) != pos:
        raise CorpusError(f"{where} changed while it was read")
    offsets = np.lib.format.open_memmap(out / "offsets.npy", mode="w+", dtype=np.int64, shape=(count,))
    offsets[:] = np.fromfile(out / "offsets.tmp", dtype=np.int64)
    offsets.flush()
    del offsets
    os.remove(out / "offsets.tmp")
    return count, chunks, h.hexdigest(), bool(has_ids)


def read_chunk(path, chunk, opts):
    """The texts of one chunk: its byte range of the input, parsed as the scan parsed it."""
    start, end, _, rows = chunk
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    texts = []
    for raw in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
        item = parse_line(raw, 0, opts, str(path))
        if item is not None:
            texts.append(item[0])
    if len(texts) != rows:
        raise CorpusError(f"{path} changed since it was scanned (chunk at byte {start}: {len(texts)} items, "
                          f"expected {rows}); re-run with --overwrite")
    return texts


# ----------------------------------------------------------------------------
# one chunk: embed and write its rows, then mark it done (the unit a Dask task runs)


def _done_path(out, i):
    return Path(out) / "done" / f"{i:08d}"


def data_offset(npy):
    """The byte offset of the array data in a .npy file."""
    with open(npy, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        read(f)
        return f.tell()


def count_truncated(model, texts, row0):
    """How many texts the tokenizer cuts to the model's max_seq_length. A text it gives no token
    at all (a blank one, for a tokenizer that adds no [CLS]/[SEP]) has no embedding: an error."""
    n = 0
    for r, e in enumerate(model.tokenizer.encode_batch(texts)):
        if not e.ids:
            raise CorpusError(f"item {row0 + r} ({texts[r]!r}) gives no tokens with this model's tokenizer, "
                              f"so it has no embedding; pass --skip-empty to skip blank items")
        n += bool(e.overflowing)
    return n


def embed_chunk(model, out, i, chunk, opts, batch_size):
    """Embed chunk i into OUT/embeddings.npy and mark it done; returns {"rows", "truncated"}."""
    out = Path(out)
    texts = read_chunk(opts["input"], chunk, opts)
    stats = {"rows": len(texts), "truncated": count_truncated(model, texts, chunk[2])}
    emb = model.embed(texts, batch_size=batch_size)  # (rows, C) float32
    npy = out / "embeddings.npy"
    data = np.ascontiguousarray(emb, dtype=np.float32).tobytes()
    where = data_offset(npy) + chunk[2] * opts["dims"] * 4
    fd = os.open(npy, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, where)
            view, where = view[n:], where + n
        os.fsync(fd)
    finally:
        os.close(fd)
    write_atomic(_done_path(out, i), json.dumps(stats).encode())
    return stats


def done_stats(out, n_chunks):
    """{chunk index: stats} of the chunks marked done."""
    done = {}
    for p in (Path(out) / "done").glob("[0-9]" * 8):
        i = int(p.name)
        if i < n_chunks:
            done[i] = json.loads(p.read_text())
    return done


# ----------------------------------------------------------------------------
# the manifest: what OUT is for; a run for something else is refused unless overwrite


def model_fingerprint(model):
    """A hash of everything that decides the vectors: config, weights, tokenizer, max_seq_length."""
    h = hashlib.sha256(repr(model.config).encode())
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(np.ascontiguousarray(p.get() if hasattr(p, "get") else p).tobytes())
    h.update(model.tokenizer.to_str().encode())
    h.update(str(model.max_seq_length).encode())
    return h.hexdigest()[:16]


def read_manifest(out):
    p = Path(out) / "manifest.json"
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorpusError(f"{p} is not valid JSON; re-run with --overwrite to start over") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise CorpusError(f"{p} is not a qkv corpus manifest (format {FORMAT}); re-run with --overwrite")
    return m


def _clear(out, keep):
    """Remove what a previous run left in OUT (only qkv's files, not `keep`); the manifest first,
    so that a kill halfway leaves an OUT that the next run starts over."""
    for name in OURS:
        p = out / name
        if p == keep:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    _remove_temporaries(out)


def _remove_temporaries(out):
    """Delete the temporary files of writes a kill interrupted (never renamed, so never read)."""
    for p in [*out.glob("*.tmp*"), *out.glob("done/*.tmp*")]:
        p.unlink(missing_ok=True)


def _check_out(out, overwrite):
    """OUT must be a folder that is new, empty, or holds only qkv's files."""
    if out.exists() and not out.is_dir():
        raise CorpusError(f"--output {out} is a file; give a folder (it will hold embeddings.npy and manifest.json)")
    out.mkdir(parents=True, exist_ok=True)
    strangers = [p.name for p in out.iterdir() if p.name not in OURS and ".tmp" not in p.name]
    if strangers and not overwrite:
        raise CorpusError(f"--output {out} holds other files ({', '.join(sorted(strangers)[:3])}); "
                          f"give a new or empty folder")


def _differences(m, want):
    keys = [("input", "size"), ("input", "sha256"), ("model", "fingerprint"), ("options",), ("chunk_rows",)]
    diff = []
    for k in keys:
        a, b = m, want
        for part in k:
            a, b = (a or {}).get(part), (b or {}).get(part)
        if a != b:
            diff.append(".".join(k))
    return diff


# ----------------------------------------------------------------------------
# the whole job


def embed_corpus(model, source, out, *, batch_size=32, field=None, id_field="id", skip_empty=False,
                 errors="strict", chunk_rows=CHUNK_ROWS, overwrite=False, model_name=None, model_folder=None,
                 dask=None, progress=False, log=None):
    """Embed every item of `source` (a text or JSON Lines file path) into the folder `out`.

    model: an Encoder (with its tokenizer). field: None = one text a line; a name = JSON Lines,
    the text in that field (ids from `id_field` when the items have it). skip_empty: drop blank
    items instead of embedding them as the empty text. errors: "strict" (invalid UTF-8 is an
    error naming the line) or "replace". dask: None (this process), "local:N", a scheduler
    address or a distributed.Client (needs model_folder, which every worker loads). Returns a summary dict.
    """
    from qkv._progress import progress_bar

    stream = sys.stderr if progress else io.StringIO()  # progress_bar shows on a terminal only
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    if model.tokenizer is None:
        raise ValueError("embed_corpus needs a tokenizer: load the model with Encoder.from_pretrained(folder)")
    src = Path(source).resolve()
    if not src.is_file():
        raise CorpusError(f"--input {source}: " + ("is a folder, give a file" if src.is_dir() else "no such file"))
    out = Path(out)
    opts = {"field": field, "id_field": id_field, "skip_empty": bool(skip_empty), "errors": errors}
    fingerprint = model_fingerprint(model)
    want = {"input": {"size": src.stat().st_size}, "model": {"fingerprint": fingerprint}, "options": opts,
            "chunk_rows": int(chunk_rows)}
    _check_out(out, overwrite)
    m = read_manifest(out) if not overwrite else None
    if m is not None and not done_stats(out, len(m["chunks"])):
        m = None  # a job that never finished a chunk holds nothing to lose: start this one instead
    if m is not None:
        want["input"]["sha256"] = _sha256(src) if m["input"].get("size") == want["input"]["size"] else None
        diff = _differences(m, want)
        if diff:
            raise CorpusError(f"--output {out} holds embeddings of another job (differs in {', '.join(diff)}: "
                              f"it was {m['input']['path']}); pass --overwrite to replace it, or give another folder")
        _remove_temporaries(out)  # a resumed job: what its killed run was writing is redone
    else:  # a new job: start from nothing, then scan
        _clear(out, keep=src)
        with progress_bar(total=want["input"]["size"], desc="scan", unit="B", unit_scale=True, stream=stream) as bar:
            count, chunks, sha, has_ids = scan(src, out, opts, int(chunk_rows), bar)
        dims = model.config.n_embd
        emb = np.lib.format.open_memmap(out / "embeddings.npy", mode="w+", dtype=np.float32, shape=(count, dims))
        emb.flush()
        del emb
        (out / "done").mkdir()
        m = {"format": FORMAT,
             "input": {"path": str(src), "size": want["input"]["size"], "sha256": sha},
             "model": {"name": model_name, "folder": None if model_folder is None else str(Path(model_folder).resolve()),
                       "fingerprint": fingerprint, "max_seq_length": int(model.max_seq_length)},
             "dims": dims, "count": count, "ids": has_ids, "chunk_rows": int(chunk_rows), "options": opts,
             "chunks": chunks}
        write_atomic(out / "manifest.json", (json.dumps(m, indent=1) + "\n").encode())
    chunks = m["chunks"]
    done = done_stats(out, len(chunks))
    todo = [i for i in range(len(chunks)) if i not in done]
    task_opts = dict(opts, input=m["input"]["path"], dims=m["dims"])
    with progress_bar(total=m["count"], initial=sum(d["rows"] for d in done.values()), desc="embed", unit="text",
                      stream=stream) as bar:
        if dask is None:
            for i in todo:
                done[i] = embed_chunk(model, out, i, chunks[i], task_opts, batch_size)
                bar.update(done[i]["rows"])
        else:
            from qkv.corpus_dask import run_chunks

            if model_folder is None:
                raise ValueError("dask needs model_folder: the model folder every worker loads")
            for i, stats in run_chunks(dask, model_folder, fingerprint, out, todo, chunks, task_opts, batch_size):
                done[i] = stats
                bar.update(stats["rows"])
    done = done_stats(out, len(chunks))
    if len(done) != len(chunks):  # pragma: no cover - every chunk above ended done or raised
        raise RuntimeError(f"{len(chunks) - len(done)} chunks are not done")
    truncated = sum(d["truncated"] for d in done.values())
    summary = {"out": str(out), "count": m["count"], "dims": m["dims"], "chunks": len(chunks),
               "resumed_chunks": len(chunks) - len(todo), "truncated": truncated,
               "max_seq_length": m["model"]["max_seq_length"]}
    if truncated and log is not None:
        log(f"warning: {truncated} of {m['count']} texts are longer than {summary['max_seq_length']} tokens "
            f"and were truncated to it")
    return summary


def spill(texts, out, overwrite=False):
    """An iterable of texts -> OUT/input.jsonl ({"text": ...} a line), written once, streaming;
    the corpus pipeline then reads it like any JSON Lines file (and search prints from it)."""
    out = Path(out)
    _check_out(out, overwrite)
    tmp = out / "input.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"embed_corpus: texts must be strings, item {i} is a {type(t).__name__}")
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    final = out / "input.jsonl"
    if final.is_file() and _sha256(final) == _sha256(tmp):
        tmp.unlink()
        return final
    if not overwrite and read_manifest(out) is not None:
        tmp.unlink()
        raise CorpusError(f"{out} holds embeddings of other texts; pass overwrite=True to replace them")
    os.replace(tmp, final)
    return final


# ----------------------------------------------------------------------------
# search: exact cosine over embeddings.npy, in blocks


def open_corpus(out):
    """(manifest, embeddings memmap (N, C)) of a finished OUT."""
    out = Path(out)
    if not out.is_dir():
        raise CorpusError(f"{out}: no such folder (qkv embed --input FILE --output {out} makes it)")
    m = read_manifest(out)
    if m is None:
        raise CorpusError(f"{out} has no manifest.json: not the output of qkv embed --input")
    n_done = len(done_stats(out, len(m["chunks"])))
    if n_done != len(m["chunks"]):
        raise CorpusError(f"{out} is unfinished ({n_done} of {len(m['chunks'])} chunks done); "
                          f"re-run the same qkv embed command to finish it")
    emb = np.load(out / "embeddings.npy", mmap_mode="r")
    if emb.shape != (m["count"], m["dims"]):
        raise CorpusError(f"{out}/embeddings.npy has shape {emb.shape}, the manifest says {(m['count'], m['dims'])}")
    return m, emb


def top_k(emb, q, k, block=SEARCH_BLOCK):
    """The k rows of emb (N, C) with the largest emb @ q (q (C,)), best first: (rows, scores).
    Reads emb in blocks of `block` rows, so memory stays flat for any N."""
    N = emb.shape[0]
    k = min(k, N)
    best_i = np.empty(0, np.int64)
    best_s = np.empty(0, np.float32)
    for s in range(0, N, block):
        scores = np.asarray(emb[s:s + block]) @ q  # (b,)
        idx = np.arange(s, s + len(scores))
        cand_s, cand_i = np.concatenate([best_s, scores]), np.concatenate([best_i, idx])
        if len(cand_s) > k:
            keep = np.argpartition(-cand_s, k - 1)[:k]
            cand_s, cand_i = cand_s[keep], cand_i[keep]
        best_s, best_i = cand_s, cand_i
    order = np.lexsort((best_i, -best_s))  # by score, ties by row
    return best_i[order], best_s[order]


def items(m, offsets):
    """[(text, id or None), ...] of the items whose lines start at these byte offsets of the input."""
    found = []
    with open(m["input"]["path"], "rb") as f:
        for off in offsets:
            f.seek(int(off))
            raw = f.readline()
            text, item_id = parse_line(raw[:-1] if raw.endswith(b"\n") else raw, 0, m["options"], m["input"]["path"])
            found.append((text, None if item_id is None or item_id is _NO_ID else item_id))
    return found
