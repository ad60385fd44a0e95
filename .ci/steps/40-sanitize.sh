#!/usr/bin/env bash
# Memory safety: build a copy of the tree with AddressSanitizer + UndefinedBehaviorSanitizer
# (QKV_SANITIZE=1) and run the CPU test suite against it; any report aborts the run. Then the
# same with Cython bounds checking on (QKV_DEBUG_CYTHON=1).
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r setup.py pyproject.toml README.md csrc src tests "$work"/
find "$work/src" -name '*.so' -delete
tests="tests/test_softmax.py tests/test_layernorm.py tests/test_activation.py tests/test_linear.py
       tests/test_errors.py tests/test_inputs_unchanged.py tests/test_threads.py tests/test_properties.py
       $(ls tests/test_attention*.py 2>/dev/null | tr '\n' ' ')"

echo "-- ASan + UBSan build"
(cd "$work" && QKV_SANITIZE=1 python setup.py -q build_ext --inplace >/dev/null)
libasan=$(gcc -print-file-name=libasan.so)
libubsan=$(gcc -print-file-name=libubsan.so)
(cd "$work" && LD_PRELOAD="$libasan:$libubsan" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    PYTHONPATH=src python -m pytest -q -x -p no:cacheprovider $tests)

echo "-- bounds-checked Cython build"
find "$work/src" -name '*.so' -delete
find "$work/src" -name '_*.c' -path '*/_cpu/*' -delete
(cd "$work" && QKV_DEBUG_CYTHON=1 python setup.py -q build_ext --inplace >/dev/null)
(cd "$work" && PYTHONPATH=src python -m pytest -q -x -p no:cacheprovider $tests)
