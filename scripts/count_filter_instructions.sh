#!/usr/bin/env bash
# Instructions per stream each filter adds to the stream lifecycle (callgrind): a measure of
# per-request cost that, unlike wall-clock time, does not move with the machine's load.
# Usage: scripts/count_filter_instructions.sh 'FILE.wasm=CONFIG' ...   (run after make filters)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
cargo bench -q -p meshwork-wasm-host --bench stream_lifecycle --no-run 2>/dev/null
bench=$(ls -t "$root"/target/release/deps/stream_lifecycle-* | grep -v '\.d$' | head -1)
n=100
per_stream() {  # BENCH_CASE, args...
  local case=$1; shift
  local out; out=$(mktemp)
  BENCH_CASE=$case BENCH_ITERATIONS=$n valgrind --tool=callgrind --toggle-collect='stream_lifecycle::measure' \
    --callgrind-out-file="$out" "$bench" "$@" >/dev/null 2>&1
  local total; total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  rm -f "$out"
  # measure() runs n/10 warm-up streams and five timed runs of n.
  echo $(( total * 10 / (51 * n) ))
}
empty=$(per_stream empty)
printf '%-60s %12s %12s\n' "filter (config)" "instr/stream" "added"
printf '%-60s %12s %12s\n' "empty chain" "$empty" "-"
for arg in "$@"; do
  t=$(per_stream filters "$arg")
  printf '%-60s %12s %12s\n' "$(basename "${arg%%=*}") ${arg#*=}" "$t" "$((t - empty))"
done
