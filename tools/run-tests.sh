#!/usr/bin/env bash
# run-tests.sh - installs what is missing, builds, and runs every test (unit and integration).
# Prints meson's report; the exit code is non-zero if any test failed.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
store_install_deps
store_build build
meson test -C build --print-errorlogs --num-processes 2 "$@"
