#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build readmark:
# clang and libclang-dev, which RocksDB's Rust bindings (bindgen) need.
# Safe to run again: it installs nothing that is already there.
set -euo pipefail

missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q 'libclang'; then
  missing+=(libclang-dev)
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]} (needed to compile RocksDB's bindings)"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq clang libclang-dev >/dev/null
fi
echo "setup: toolchain ready ($(cargo --version), $(clang --version | head -n1))"
