#!/usr/bin/env bash
# asv: the benchmark suite still imports and its parameters are valid (asv check), and a small
# subset runs once per parameter set in the installed qkv (asv run --quick). asv exits 1 when the
# suite cannot be discovered and 2 when any benchmark raised (a NotImplementedError in setup is a
# skip, not a failure), so `set -e` fails CI on either. Takes ~1-2 minutes on 2 cores.
set -euo pipefail

python -m pip install -q "asv>=0.6"
asv machine --yes > /dev/null
asv check --python=same

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
asv run --python=same --quick --dry-run --show-stderr --bench '\.LayerNorm(Accuracy)?\.|LayerNormBackward\.time_|SoftmaxAccuracy' > "$log" 2>&1
status=$?
set -e
cat "$log"
if [ "$status" -ne 0 ]; then
    echo "asv run failed (exit $status)" >&2
    exit "$status"
fi
# a regex that matches nothing would pass silently: insist the smoke set really ran
for name in time_layer_norm track_gbps_layer_norm track_max_abs_err_layer_norm time_layer_norm_backward \
            track_max_abs_err_softmax_causal track_max_abs_err_softmax_mask; do
    grep -q "$name" "$log" || { echo "asv smoke run did not run $name" >&2; exit 1; }
done
