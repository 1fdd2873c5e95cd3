#!/usr/bin/env bash
# Runs readmark's cargo-fuzz targets.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Default: 30 s for each pure target (merge_marks, merge_receipts, decoders,
# journal, slots). The
# api_ops and api_restart targets link RocksDB, which a fuzz build compiles
# again (~25 min on 2 cores, once): name them explicitly to run them.
#
# The machine has a stable toolchain only; cargo fuzz needs unstable rustc
# flags (-Zsanitizer=address), which RUSTC_BOOTSTRAP=1 enables on stable.
# New inputs go to fuzz/corpus-run/<target> (not checked in), seeded from the
# checked-in fuzz/corpus/<target>; crashes go to fuzz/artifacts/<target>.
# Prints libFuzzer's final line per target ("Done N runs in S second(s)").
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-30}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(merge_marks merge_receipts decoders journal slots)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
# With -Zsanitizer=address, the cc crate instruments C and C++ too (cargo
# sets CARGO_CFG_SANITIZE): RocksDB under ASan ran api_ops at 3 executions a
# second. readmark's Rust stays instrumented; RocksDB's C++ is not.
export CFLAGS="${CFLAGS:-} -fno-sanitize=address"
export CXXFLAGS="${CXXFLAGS:-} -fno-sanitize=address"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/readmark-fuzz-target}"
for t in "${targets[@]}"; do
  features=()
  extra=()
  # The API targets keep a store open across inputs on purpose: libFuzzer
  # sees more allocations than frees per input and runs LeakSanitizer's
  # scan, which took 80 % of their time.
  case "$t" in api_*) features=(--features api); extra=(-detect_leaks=0) ;; esac
  mkdir -p "corpus-run/$t"
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run -O "${features[@]}" "$t" "corpus-run/$t" "corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 "${extra[@]}" 2>&1 | grep -E "^Done|stat::number_of_executed_units|stat::average_exec_per_sec|^#[0-9]+[[:space:]]+(INITED|DONE)|ERROR|SUMMARY|panicked" || true
  # A crash leaves an artifact and makes cargo fuzz exit non-zero (grep above
  # hides the status): check for it explicitly.
  if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz: crash found in $t: $(ls artifacts/$t/crash-*)" >&2
    exit 1
  fi
done
