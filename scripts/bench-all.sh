#!/usr/bin/env bash
# Every measurement of docs/benchmarks.md, in order, each command's output
# in its own file of OUT_DIR (default: bench-results/). Run it on an
# otherwise idle machine: the ratios are taken inside each invocation, but
# a busy machine widens the spread. About 45 minutes on 2 cores.
#
#   scripts/bench-all.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-results}"
mkdir -p "$out"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/readmark-target}"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/readmark"
run() {
  local name="$1"; shift
  echo "== $name: readmark $*"
  { echo "\$ readmark $*"; "$bin" "$@" --quiet; } > "$out/$name.txt" 2>&1
  tail -n +1 "$out/$name.txt" | grep -E '^(readmark|merge|naive|sqlite|HashMap|design|one row|ratio|[0-9]+ thread)' || true
}
# Side by side, with receipts (default Config), bursts 1, 10, 50.
run visits bench --plot docs/bench.svg
# Marks only.
run marks-only bench --burst 50 --receipt-threshold 0 --designs memory,process-crash,naive,merge,sqlite,hashmap
# Chat: every member of 8-member groups posts and reads.
run chat bench --stream chat --designs memory,process-crash,naive,merge,sqlite,hashmap
# Mark updates alone on 1, 2, 4 and 16 threads, every design.
run threads bench --stream updates --burst 50 --threads 1,2,4,16 --designs memory,process-crash,naive,merge,sqlite,hashmap
run threads-sync bench --stream updates --burst 50 --threads 1,16 --sync-updates 32000 --designs power-loss,naive-sync,merge-sync,sqlite-full
# Steady state: bytes per update with page write-back inside the run
# (45 s: Linux writes a dirty page back 30 s after it was dirtied, and
# /proc/self/io counts a page again only once write-back has cleaned it).
run steady bench --burst 50 --steady 45 --designs process-crash,merge
# The same on mark updates alone (no messages: every byte is the marks').
run steady-updates bench --stream updates --burst 50 --steady 45 --designs process-crash,merge
# The seed ADR's workload on the default Config.
run adr bench --adr
# Receipt storage per group size; concurrency and group commit; events.
run receipts receipts
run scaling scaling
run scaling-16 scaling --levels power-loss --threads 16 --updates 100000
run scaling-64 scaling --levels power-loss --threads 64 --updates 100000
run events events
echo "== criterion: cargo bench -p readmark --bench components -- --warm-up-time 1 --measurement-time 3"
cargo bench --quiet -p readmark --bench components -- --warm-up-time 1 --measurement-time 3 > "$out/criterion.txt" 2>&1
grep -E '^[a-z_]+/|time:' "$out/criterion.txt" || true
