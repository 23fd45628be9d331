#!/usr/bin/env bash
# start-store.sh - installs what is missing, builds, and starts a store in the foreground.
# Any arguments are passed to the server (e.g. --memory 4G --socket /tmp/my.sock).
# Defaults: 1 GiB of shared memory, socket at $XDG_RUNTIME_DIR/store.sock or /tmp/store-$UID.sock.
# Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
store_install_deps
store_build build
exec build/tools/store "$@"
