#!/usr/bin/env bash
# test_rust.sh - the Rust crates' tests (capi/rust) against the library in the build directory
# and a real store, then README's "From Rust" commands as a user runs them: the example built
# with README's cargo command from the source directory, run against a store this script
# starts, its output checked. Nothing sets LD_LIBRARY_PATH: the binaries find the library
# through the rpath the build scripts give them. Skipped (exit 77) where no cargo is installed.
# Arguments: the build directory and the source directory.
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
command -v cargo >/dev/null || { echo "cargo is not installed: Rust tests skipped"; exit 77; }
unset LD_LIBRARY_PATH
STORE_BIN=${STORE_BIN:-$build/tools/store}
export STORE_BIN=$(realpath "$STORE_BIN")

tmp=$(mktemp -d /tmp/store-rust-XXXXXX)
server=
cleanup() {
  if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

. "$(dirname "$0")/hosted_env.sh"
runner=$(store_hosted_runner)
if [ -n "$runner" ]; then export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$runner; fi

# The crates' own tests (each starts its own stores).
CARGO_TARGET_DIR=$build/rust-target STORECLIENT_LIB_DIR=$build/capi \
  STORECLIENT_INCLUDE_DIR=$src/include \
  cargo test --offline --quiet --manifest-path "$src/capi/rust/Cargo.toml" 2>&1

# README's commands: the indented lines of its "### From Rust" section, continuations joined.
readme=$(awk '/^### From Rust$/ {on=1; next} /^### / {on=0} on && /^    / {sub(/^    /, ""); print}' \
  "$src/README.md" | sed -e ':a' -e '/\\$/N; s/\\\n */ /; ta')
start=$(grep '^build/tools/store ' <<<"$readme") || { echo "README: no command starting a store"; exit 1; }
run=$(grep 'cargo run ' <<<"$readme") || { echo "README: no cargo run command"; exit 1; }
sock=$(sed -n 's/.*--socket \([^ ]*\).*/\1/p' <<<"$start")
grep -q -- "--example put_get" <<<"$run" || { echo "README: the cargo command runs no put_get"; exit 1; }
# The same commands with this build directory for build/, and a private socket.
rel=$(realpath --relative-to="$src" "$build")
run=${run//build\//$rel/}
run=${run//$sock/$tmp/store.sock}

"$STORE_BIN" --socket "$tmp/store.sock" --memory 64M --log-level warn &
server=$!
for _ in $(seq 1 2000); do
  [ -S "$tmp/store.sock" ] && break
  sleep 0.005
done
[ -S "$tmp/store.sock" ] || { echo "the store did not start"; exit 1; }

# A target directory of its own, so nothing is left in the source tree.
export CARGO_TARGET_DIR=$build/rust-readme-target
echo "from $src: $run"
out=$(cd "$src" && env -u STORECLIENT_INCLUDE_DIR bash -c "$run" 2>"$tmp/cargo.err") || {
  cat "$tmp/cargo.err"
  echo "README's cargo run failed"
  exit 1
}
echo "$out"

id=$(printf '%s' example-key | sha1sum | cut -c1-40)
id2=$(printf '%s' example-key-copy | sha1sum | cut -c1-40)
check() {
  grep -qxF "$1" <<<"$2" || { echo "expected the line: $1"; exit 1; }
}
check "$id = \"hello from rust\" (metadata \"text/plain\")" "$out"
check "$id2 = \"hello from rust\"" "$out"
check "deleted $id and $id2" "$out"

# The example binary itself, given the socket as its argument, with STORE_SOCKET pointing
# nowhere: found its library by its rpath alone.
exe=$CARGO_TARGET_DIR/debug/examples/put_get
readelf -d "$exe" | grep -q "R*PATH.*\[$build/capi\]" || { readelf -d "$exe"; echo "no rpath to $build/capi"; exit 1; }
out=$(STORE_SOCKET=$tmp/nothing.sock $runner "$exe" "$tmp/store.sock" other-key "second value")
check "$(printf '%s' other-key | sha1sum | cut -c1-40) = \"second value\" (metadata \"text/plain\")" "$out"
left=$("$STORE_BIN" ls -q --socket "$tmp/store.sock")
[ -z "$left" ] || { echo "the example left objects behind: $left"; exit 1; }
echo "README's Rust commands build the example against $rel/capi and run it without LD_LIBRARY_PATH"
