#!/usr/bin/env bash
# test_dask.sh - storeclient.dask (capi/python/storeclient/dask.py) with real Dask workers
# (python3-distributed, which tools/deps.sh installs) against the library in the build directory
# and real stores. Skipped (exit 77) only where Dask or NumPy cannot be imported.
# Arguments: the build directory, the source directory and the Python to run.
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
py=${3:-python3}
command -v "$py" >/dev/null || { echo "$py is not installed: Dask tests skipped"; exit 77; }
if ! "$py" -c 'import distributed, dask.array, numpy' 2>/dev/null; then
  echo "$py cannot import distributed, dask.array and numpy (python3-distributed, python3-numpy):"
  echo "Dask tests skipped"
  exit 77
fi
STORE_BIN=${STORE_BIN:-$build/tools/store}
export STORE_BIN=$(realpath "$STORE_BIN")
export STORECLIENT_LIB=$build/capi/libstoreclient.so.2
. "$(dirname "$0")/hosted_env.sh"
store_hosted_preload
export PYTHONPYCACHEPREFIX=$(mktemp -d /tmp/store-pycache-XXXXXX)
# Dask's workers keep their scratch space here; removed with everything else at the end.
work=$(mktemp -d /tmp/store-dask-test-XXXXXX)
export DASK_TEMPORARY_DIRECTORY=$work
trap 'rm -rf "$PYTHONPYCACHEPREFIX" "$work"' EXIT
"$py" -c 'import distributed; print("distributed", distributed.__version__)'
cd "$work"
"$py" "$src/capi/python/tests/dask_cases.py" -v 2>&1

# The example, against a store of its own: it runs, and leaves nothing behind.
"$STORE_BIN" --socket "$work/example.sock" --memory 512M --log-level warn &
store_pid=$!
trap 'kill "$store_pid" 2>/dev/null; wait "$store_pid" 2>/dev/null; rm -rf "$PYTHONPYCACHEPREFIX" "$work"' EXIT
for _ in $(seq 1 2000); do [ -S "$work/example.sock" ] && break; sleep 0.005; done
out=$("$py" "$src/capi/python/examples/dask_local.py" "$work/example.sock" 2>"$work/example.err") || {
  cat "$work/example.err"; echo "the example failed"; exit 1; }
echo "$out"
grep -q "^sum of x + x.T: " <<<"$out" || { echo "the example printed no sum"; exit 1; }
grep -q "^objects in the store after the cluster closed: 0$" <<<"$out" ||
  { echo "the example left objects in the store"; exit 1; }
