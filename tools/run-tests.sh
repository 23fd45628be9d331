#!/usr/bin/env bash
# run-tests.sh - installs what is missing, builds, and runs every test (unit and integration),
# then the C/C++ suites again in a sanitizer build, build-san:
#   -Db_sanitize=address,undefined  AddressSanitizer (with LeakSanitizer) and
#       UndefinedBehaviorSanitizer over everything: server, library, tools and tests. Any finding
#       aborts its process (-fno-sanitize-recover=all, from meson.build) and fails its test.
#   -Dserver_heap=system  the server's own heap is the sanitizer's malloc, checked like the
#       client's, while a je_-prefixed copy of jemalloc still manages the shared region (ASan
#       cannot start over jemalloc's malloc: its interceptors' set-up calls dlsym, which
#       allocates before jemalloc can).
#   -Doptimization=0  compiles three times faster than -O1 under the sanitizers, and the
#       tests wait on sockets and processes more than they compute.
# One build with both sanitizers, not one each: a build takes most of the added time.
# There `meson test --setup sanitize` (tests/meson.build) leaves out what only repeats the normal
# run or means nothing under a sanitizer:
#   bench      store-bench's figures: timing under a sanitizer means nothing, and its code paths
#              are the client library's, which the integration suites cover.
#   hugepages  the client, cli, lifecycle, isolation and spilling suites again on huge pages:
#              the same code with another mapping flag, already run in build.
#   slow       not in the default run either.
# The tests that load the library into programs built without the sanitizer (rust, python,
# python_install, dask, c_example) run with the AddressSanitizer runtime preloaded into those
# programs and their leak report off (tests/hosted_env.sh).
# STORE_SANITIZE=0 skips the sanitizer build. Arguments are passed to every `meson test`.
# Prints meson's reports; the exit code is non-zero if any test failed.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
store_install_deps
store_build build
rc=0
# The sanitizer build's log is from this run or absent (.ci/run counts what it holds).
rm -f build-san/meson-logs/testlog*.json
meson test -C build --print-errorlogs --num-processes 2 "$@" || rc=$?

if [ "${STORE_SANITIZE:-1}" != 0 ]; then
  echo "== build-san: the suites under -fsanitize=address,undefined"
  if store_build build-san -Db_sanitize=address,undefined -Dserver_heap=system -Doptimization=0; then
    meson test -C build-san --setup sanitize --print-errorlogs --num-processes 2 "$@" || rc=1
  else
    echo "run-tests.sh: building build-san failed" >&2
    rc=1
  fi
fi
exit "$rc"
