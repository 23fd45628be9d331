#!/usr/bin/env bash
# test_c_example.sh - the README's C example, built as a user would: install store into a
# temporary prefix, compile README's example with `cc ... $(pkg-config --cflags --libs
# storeclient)` in strict C99 and as C++, run it against a real store, check what it prints.
# Arguments: the build directory and the source directory. STORE_BIN names the server.
set -euo pipefail
build=$1
src=$2
tmp=$(mktemp -d /tmp/store-c-example-XXXXXX)
server=
cleanup() {
  if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
. "$(dirname "$0")/hosted_env.sh"
store_hosted_preload

for tool in cc c++ pkg-config; do
  command -v "$tool" >/dev/null || { echo "$tool is missing"; exit 77; }
done

meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet >/dev/null
pc=$(find "$tmp/root" -name storeclient.pc | head -n 1)
[ -n "$pc" ] || { echo "storeclient.pc was not installed"; exit 1; }
# The files sit under the staging root: point the .pc file's prefix there.
mkdir -p "$tmp/pc"
prefix=$(sed -n 's/^prefix=//p' "$pc")
sed "s|^prefix=.*|prefix=$tmp/root$prefix|" "$pc" > "$tmp/pc/storeclient.pc"
export PKG_CONFIG_PATH=$tmp/pc
flags=$(pkg-config --cflags --libs storeclient)
libdir=$(pkg-config --variable=libdir storeclient)

# The example is the first ```c block of the README.
awk '/^```c$/ {on=1; next} /^```$/ && on {exit} on {print}' "$src/README.md" > "$tmp/example.c"
grep -q store_client_connect "$tmp/example.c" || { echo "no C example found in README.md"; exit 1; }

cc -std=c99 -pedantic -Wall -Wextra -Werror "$tmp/example.c" $flags -o "$tmp/example-c"
c++ -std=c++17 -Wall -Wextra -Werror -x c++ "$tmp/example.c" -x none $flags -o "$tmp/example-cxx"

# A store on a private socket; the example uses the default socket, so point it there.
export XDG_RUNTIME_DIR=$tmp/run
mkdir -p "$XDG_RUNTIME_DIR"
"${STORE_BIN:-$build/tools/store}" --memory 16M --log-level warn &
server=$!
for _ in $(seq 1 2000); do
  [ -S "$XDG_RUNTIME_DIR/store.sock" ] && break
  sleep 0.005
done
[ -S "$XDG_RUNTIME_DIR/store.sock" ] || { echo "the store did not start"; exit 1; }

for exe in example-c example-cxx; do
  out=$(LD_LIBRARY_PATH=$libdir "$tmp/$exe")
  if [ "$out" != "hello, shared memory" ]; then
    echo "$exe printed '$out'"
    exit 1
  fi
done
echo "the README example builds as C99 and C++ against the installed library and runs"
