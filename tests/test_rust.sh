#!/usr/bin/env bash
# test_rust.sh - the Rust crates' tests (capi/rust) against the library in the build directory
# and a real store. Skipped (exit 77) where no cargo is installed.
# Arguments: the build directory and the source directory.
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
command -v cargo >/dev/null || { echo "cargo is not installed: Rust tests skipped"; exit 77; }
export CARGO_TARGET_DIR=$build/rust-target
export STORECLIENT_LIB_DIR=$build/capi
export STORECLIENT_INCLUDE_DIR=$src/include
export LD_LIBRARY_PATH=$build/capi${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
STORE_BIN=${STORE_BIN:-$build/tools/store}
export STORE_BIN=$(realpath "$STORE_BIN")
cargo test --offline --quiet --manifest-path "$src/capi/rust/Cargo.toml" 2>&1
