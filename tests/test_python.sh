#!/usr/bin/env bash
# test_python.sh - the Python package's tests (capi/python) against the library in the build
# directory and a real store. Skipped (exit 77) where no Python is installed.
# Arguments: the build directory, the source directory and the Python to run (default: the
# python3 on PATH; meson passes the Python it installs the package for, Debian's
# /usr/bin/python3, which sees Debian's python3-numpy).
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
py=${3:-python3}
command -v "$py" >/dev/null || { echo "$py is not installed: Python tests skipped"; exit 77; }
STORE_BIN=${STORE_BIN:-$build/tools/store}
export STORE_BIN=$(realpath "$STORE_BIN")
export STORECLIENT_LIB=$build/capi/libstoreclient.so.2
. "$(dirname "$0")/hosted_env.sh"
store_hosted_preload
export STORE_ID_VECTORS=$src/tests/id_vectors.txt
# Bytecode goes to a temporary directory, not into the source tree.
export PYTHONPYCACHEPREFIX=$(mktemp -d /tmp/store-pycache-XXXXXX)
trap 'rm -rf "$PYTHONPYCACHEPREFIX"' EXIT
"$py" -c 'import sys; print("python", sys.version.split()[0], sys.executable)'
"$py" -c 'import numpy; print("numpy", numpy.__version__)' 2>/dev/null ||
  echo "numpy cannot be imported: the NumPy cases are skipped"
"$py" -m unittest discover -s "$src/capi/python/tests" 2>&1
