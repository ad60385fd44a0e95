#!/usr/bin/env bash
# Corpus embedding on Dask: README's test command installs only ".[test]", where
# tests/test_corpus_dask.py skips. Here the "dask" extra (read from pyproject.toml, so the two
# never drift apart) goes into the CI venv and the LocalCluster tests run: 2 single-threaded
# workers give the bytes of one process, and a worker SIGKILLed mid-run loses nothing.
set -euo pipefail
mapfile -t reqs < <(python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dask"], sep="\n")')
python -m pip install -q "${reqs[@]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
python -m pytest -q -p no:cacheprovider -p no:logging -rs tests/test_corpus_dask.py | tee "$log"
# a skip (Dask not importable) would pass silently: insist the tests ran
if grep -qi "skipped" "$log"; then
    echo "the Dask tests were skipped" >&2
    exit 1
fi
