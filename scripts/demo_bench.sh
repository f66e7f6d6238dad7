#!/usr/bin/env bash
# The demo's short benchmark: the sample app direct, through meshwork without filters, and
# through meshwork with the demo's filters (measure and local-rate-limit, the limit sized so the
# benchmark is not throttled), a few seconds each, open loop. Writes one SMP result document per
# scenario (YAML and JSON), prints the comparison table and writes an SVG overlaying the
# scenarios' latency by percentile.
#
# Usage: scripts/demo_bench.sh [UPSTREAM_URL] [OUT_DIR]
#   UPSTREAM_URL  a running sample app (scripts/demo.sh passes its own); without it one is started
#   OUT_DIR       default target/demo-bench
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/meshwork"
upstream=${1:-}
out=${2:-$root/target/demo-bench}
mkdir -p "$out"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; true' EXIT

if [ -z "$upstream" ]; then
  "$bin" upstream --listen 127.0.0.1:0 --name bench-app > "$out/upstream.out" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do grep -q "http://" "$out/upstream.out" 2>/dev/null && break; sleep 0.1; done
  upstream=$(grep -o "http://127.0.0.1:[0-9]*" "$out/upstream.out" | head -1)
  [ -n "$upstream" ] || { echo "demo_bench: the sample app did not start" >&2; exit 1; }
fi

cat > "$out/profile.yaml" <<YAML
# An SMP performance profile: meshwork bench --profile $out/profile.yaml
smp_version: v0.0.1
id: demo-bench
name: demo
labels: {source: scripts/demo_bench.sh}
duration: 2s
warmup: 500ms
clients:
  - load_generator: meshwork
    protocol: http
    connections: 8
    rps: 500
    headers: {x-user: bench}
    endpoint_urls: ["${upstream%/}/api/items?size=256"]
scenarios:
  - {name: direct, kind: direct}
  - {name: meshwork, kind: meshwork}
  - name: meshwork+filters
    kind: meshwork
    workers: 2
    filters:
      - name: measure
        module: $root/target/filters/measure.wasm
        configuration: {routes: [{name: api, prefix: /api/}, {name: static, prefix: /static/}]}
      - name: ratelimit
        module: $root/target/filters/local-rate-limit.wasm
        configuration: {rate: 100000, period: 1s, burst: 10000, key: {header: x-user}}
YAML

echo "== a short benchmark (SMP profile $out/profile.yaml): direct vs through meshwork, 2 s each at 500 req/s, open loop"
"$bin" bench --profile "$out/profile.yaml" --out "$out" --quiet
echo "   SMP result documents: $out/{direct,meshwork,meshwork_filters}.smp.{yaml,json}"
echo "   latency by percentile, the scenarios overlaid: $out/comparison.svg"
