#!/usr/bin/env bash
# meshwork benchmarks, all measured in this run on this machine:
#  1. the cost of one stream lifecycle through the wasm host (no network), per filter;
#  2. one proxy hop: meshwork (no filter, with measure) vs nginx, CPU per request and req/s;
#  3. the load generator: requests per CPU-second of meshwork load vs wrk and h2load.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

echo "== 1. stream lifecycle through the host (context create, headers, body, log, done, delete)"
cargo bench -q -p meshwork-wasm-host --bench stream_lifecycle -- \
  "$root/target/filters/measure.wasm" \
  "$root/target/filters/local-rate-limit.wasm={\"rate\": 1000000000, \"burst\": 1000000000}" 2>/dev/null

echo
echo "== 2. one proxy hop vs nginx (targets: meshwork hop <= 1.0x nginx CPU/request; measure adds <= 1.2 us)"
python3 scripts/bench_hop.py --filters measure "$@"

echo
echo "== 3. the load generator's own cost: meshwork load vs wrk and h2load, requests per CPU-second (target >= 1.0x wrk)"
python3 scripts/bench_load.py
