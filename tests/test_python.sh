#!/usr/bin/env bash
# test_python.sh - the Python package's tests (capi/python) against the library in the build
# directory and a real store. Skipped (exit 77) where no python3 is installed.
# Arguments: the build directory and the source directory.
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
command -v python3 >/dev/null || { echo "python3 is not installed: Python tests skipped"; exit 77; }
STORE_BIN=${STORE_BIN:-$build/tools/store}
export STORE_BIN=$(realpath "$STORE_BIN")
export STORECLIENT_LIB=$build/capi/libstoreclient.so.1
python3 -m unittest discover -s "$src/capi/python/tests" 2>&1
