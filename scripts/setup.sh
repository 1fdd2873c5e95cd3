#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test
# readmark: clang and libclang-dev, which RocksDB's Rust bindings (bindgen)
# need, fiu-utils (libfiu's `fiu-run`), which tests/it/libfiu.rs runs a
# child under to fail RocksDB's and the journal's file I/O, and
# nats-server (JetStream), which the cluster's test starts three of.
# Safe to run again: it installs nothing that is already there.
set -euo pipefail

missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q 'libclang'; then
  missing+=(libclang-dev)
fi
command -v fiu-run >/dev/null 2>&1 || missing+=(fiu-utils)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]} (RocksDB's bindings; I/O fault injection and a JetStream cluster for the tests)"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "setup: toolchain ready ($(cargo --version), $(clang --version | head -n1))"
