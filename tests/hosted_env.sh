# hosted_env.sh - sourced by the tests that load libstoreclient into programs built without the
# sanitizer: interpreters, cargo's test binaries, the README's example built by `cc`.
# Under the sanitizer build's test setup (tests/meson.build sets STORE_TEST_PRELOAD to the
# AddressSanitizer runtime), that runtime must come first in such a program's library list, so
# store_hosted_preload puts it in LD_PRELOAD for every program the test starts, and turns the
# leak report off: an interpreter's own allocations at exit are not the library's (the C and C++
# suites check the library's). Elsewhere it does nothing.
# store_hosted_runner prints the runner for cargo (CARGO_TARGET_<triple>_RUNNER): the runtime
# for the test binaries alone, not for cargo and rustc.
store_hosted_preload() {
  if [ -n "${STORE_TEST_PRELOAD:-}" ]; then
    export LD_PRELOAD=$STORE_TEST_PRELOAD
    export ASAN_OPTIONS=$(store_hosted_asan_options)
  fi
}
store_hosted_runner() {
  if [ -n "${STORE_TEST_PRELOAD:-}" ]; then
    echo "env LD_PRELOAD=$STORE_TEST_PRELOAD ASAN_OPTIONS=$(store_hosted_asan_options)"
  fi
}
# The sanitizer's options for such programs: the test's, without the leak report.
store_hosted_asan_options() {
  echo "${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
}
