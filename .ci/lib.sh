#!/usr/bin/env bash
# Helpers the CI steps source (not a step: .ci/run runs only .ci/steps/*.sh).

# copy_tree: a fresh copy of the sources and tests to build in place with other flags, without the
# compiled extensions of this checkout. Installs the in-place build deps, sets $work to the copy and
# removes it when the step exits.
copy_tree() {
    python -m pip install -q "Cython>=3.0.8" "setuptools>=68" wheel
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cp -r setup.py pyproject.toml README.md csrc src tests "$work"/
    find "$work/src" -name '*.so' -delete
}
