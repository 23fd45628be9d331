#!/usr/bin/env bash
# deps.sh - installs what building and testing store needs, from Debian's packages, if missing.
# Idempotent: does nothing (and needs no network) when everything is already installed.
set -euo pipefail

STORE_PACKAGES=(meson ninja-build pkg-config g++ libuv1-dev libflatbuffers-dev
  flatbuffers-compiler libjemalloc-dev doctest-dev libncurses-dev libxxhash-dev libcli11-dev
  nlohmann-json3-dev tmux python3 cargo python3-numpy python3-pip python3-setuptools
  python3-wheel python3-dask python3-distributed)

store_install_deps() {
  local missing=()
  local p
  for p in "${STORE_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  echo "store: installing ${missing[*]}" >&2
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Configures (once, with the meson options that follow $1) and builds into $1 (default: build).
store_build() {
  local dir=${1:-build}
  if [ $# -gt 0 ]; then shift; fi
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$@" >/dev/null
  fi
  meson compile -C "$dir" -j "$(nproc)" >/dev/null
}
