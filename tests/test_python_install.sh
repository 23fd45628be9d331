#!/usr/bin/env bash
# test_python_install.sh - the Python package installs and imports as users install it:
#  1. `pip install --no-build-isolation --no-index` (offline, Debian's setuptools) of a copy of
#     capi/python into a temporary prefix: it imports; without the library anywhere it fails
#     with a message that says what to set; with STORECLIENT_LIB it talks to a real store.
#  2. `meson install --destdir`: the package lands in the Python's site-packages under the
#     prefix and finds the library installed next to it with nothing set.
# Arguments: the build directory, the source directory, the Python. Skipped (77) without pip.
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
py=$3
tmp=$(mktemp -d /tmp/store-py-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
export PYTHONPYCACHEPREFIX=$tmp/pycache
"$py" -m pip --version >/dev/null 2>&1 || { echo "pip is missing for $py: skipped"; exit 77; }
STORE_BIN=$(realpath "${STORE_BIN:-$build/tools/store}")
export STORE_BIN
. "$(dirname "$0")/hosted_env.sh"
store_hosted_preload

# A put and get against a store started for it, through the installed package.
cat > "$tmp/roundtrip.py" <<'PY'
import os, sys
import storeclient
from storeclient import mars
assert os.path.realpath(storeclient.__file__).startswith(os.path.realpath(sys.argv[1])), \
    storeclient.__file__
proc, sock, tmp = mars.start_store(memory="16M", extra_args=["--log-level", "warn"])
try:
    with storeclient.Client(sock) as c:
        c.put_object("installed", {"ok": [1, 2, 3]})
        assert c.get_object("installed") == {"ok": [1, 2, 3]}
        c.delete("installed")
finally:
    assert mars.stop_store(proc, tmp) == 0
print("imported from", os.path.dirname(storeclient.__file__), "and served")
PY

# 1. pip, from a copy (a build leaves build/ and *.egg-info next to the sources).
cp -r "$src/capi/python" "$tmp/src"
rm -rf "$tmp/src/build" "$tmp/src"/*.egg-info
"$py" -m pip install --quiet --no-build-isolation --no-index --no-warn-script-location \
  --root-user-action=ignore --prefix "$tmp/pip" "$tmp/src" 2>&1
site=$(dirname "$(find "$tmp/pip" -path '*/storeclient/__init__.py' | head -n 1)")
[ -n "$site" ] && [ "$site" != . ] || { echo "pip installed no storeclient package"; exit 1; }
site=$(dirname "$site")
echo "pip installed the package into $site"
if ! env -u LD_LIBRARY_PATH "$py" -c 'import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library("storeclient") else 1)' &&
   ! ls /usr/local/lib/*/libstoreclient.so.2 /usr/local/lib/libstoreclient.so.2 \
        /usr/lib/*/libstoreclient.so.2 >/dev/null 2>&1; then
  # No library anywhere: the import must fail and say what to set.
  if err=$(cd "$tmp" && env -u STORECLIENT_LIB -u LD_LIBRARY_PATH PYTHONPATH="$site" \
             "$py" -c 'import storeclient' 2>&1); then
    echo "the import succeeded without a library"; exit 1
  fi
  echo "$err" | grep -q "ImportError: storeclient: libstoreclient (libstoreclient.so.2) was not found. Set STORECLIENT_LIB" ||
    { echo "unclear failure without the library:"; echo "$err"; exit 1; }
  echo "without the library the import says: $(echo "$err" | tail -n 1 | cut -c1-120)..."
fi
(cd "$tmp" && STORECLIENT_LIB=$build/capi/libstoreclient.so.2 PYTHONPATH="$site" \
   "$py" "$tmp/roundtrip.py" "$site")

# 2. meson install into a staging root: found through the recorded library directory.
meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet >/dev/null
init=$(find "$tmp/root" -path '*/storeclient/__init__.py' | head -n 1)
[ -n "$init" ] || { echo "meson install installed no storeclient package"; exit 1; }
[ -f "$(dirname "$init")/_install.py" ] || { echo "no _install.py was installed"; exit 1; }
site=$(dirname "$(dirname "$init")")
echo "meson installed the package into $site"
(cd "$tmp" && env -u STORECLIENT_LIB -u LD_LIBRARY_PATH PYTHONPATH="$site" \
   "$py" "$tmp/roundtrip.py" "$site")
