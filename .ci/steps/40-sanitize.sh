#!/usr/bin/env bash
# Memory safety: build a copy of the tree with AddressSanitizer + UndefinedBehaviorSanitizer
# (QKV_SANITIZE=1) and run the CPU test suite against it; any report aborts the run. Then the
# same with Cython bounds checking on (QKV_DEBUG_CYTHON=1).
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
copy_tree  # $work: a copy of the tree without compiled extensions, removed on exit
# the CPU suite, less the CUDA files (their CPU harness is a g++ build of its own, not these
# extensions; 20-cuda.sh) and the command-level tests (the CLI, qkv bench bodies, corpus jobs and
# Dask, the induction demo), which reach the kernels only through calls the op and model tests
# below make too.
# allocator_may_return_null: an allocation over the fuzz tests' address-space cap is a NULL (NumPy
# raises MemoryError, which those tests expect), not an ASan abort
tests="tests --ignore=tests/test_bench.py --ignore=tests/test_cli_models.py --ignore-glob=tests/test_cuda_*
       --ignore=tests/test_corpus.py --ignore=tests/test_corpus_dask.py --ignore=tests/test_search.py
       --ignore=tests/test_induction.py --ignore=tests/test_inspect_lens.py --ignore=tests/test_train_cli.py"

echo "-- ASan + UBSan build"
(cd "$work" && QKV_SANITIZE=1 python setup.py -q build_ext --inplace >/dev/null)
libasan=$(gcc -print-file-name=libasan.so)
libubsan=$(gcc -print-file-name=libubsan.so)
(cd "$work" && LD_PRELOAD="$libasan:$libubsan" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    PYTHONPATH=src python -m pytest -q -x -p no:cacheprovider $tests)

echo "-- bounds-checked Cython build"
find "$work/src" -name '*.so' -delete
find "$work/src" -name '_*.c' -path '*/_cpu/*' -delete
(cd "$work" && QKV_DEBUG_CYTHON=1 python setup.py -q build_ext --inplace >/dev/null)
(cd "$work" && PYTHONPATH=src python -m pytest -q -x -p no:cacheprovider $tests)
