#!/usr/bin/env bash
# A build without OpenMP must still compile and pass: build a copy of the tree with QKV_NO_OPENMP=1
# in place and run the row-kernel tests against it (one thread, same answers).
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
copy_tree  # $work: a copy of the tree without compiled extensions, removed on exit
(cd "$work" && QKV_NO_OPENMP=1 python setup.py -q build_ext --inplace > build.log 2>&1 || { cat build.log; exit 1; }; grep -qi "without OpenMP" build.log)
(cd "$work" && PYTHONPATH=src python -c "import qkv; from qkv._cpu import _runtime; assert not _runtime.openmp_enabled(); assert qkv.get_num_threads() == 1; assert _runtime.fma_peak_gflops(1, 2, 0.001) > 0")
(cd "$work" && PYTHONPATH=src python -m pytest -q -x -p no:cacheprovider tests/test_softmax.py tests/test_layernorm.py tests/test_linear.py tests/test_threads.py)
