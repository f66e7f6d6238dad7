#!/usr/bin/env bash
# meshwork benchmarks, all measured in this run on this machine:
#  1. the cost of one stream lifecycle through the wasm host (no network), per filter, on the
#     filter's happy path;
#  2. one proxy hop: meshwork (no filter, with measure) vs nginx, CPU per request and req/s;
#  3. the same filters' cost in instructions (callgrind), which does not move with the load;
#  4. the load generator: requests per CPU-second of meshwork load vs wrk and h2load;
#  5. TLS termination and handshakes vs nginx, and a filter's gRPC callout;
#  6. eBPF programs at XDP vs iptables and nftables;
#  7. the catalog: build + site, publish to a local registry, starting with cached oci:// filters;
#  8. Hamlet federation: one owner, many consumers, thousands of services.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Every product filter on its happy path: nothing limited, tripped, failed or injected.
f="$root/target/filters"
happy_path=(
  "$f/measure.wasm"
  "$f/local-rate-limit.wasm={\"rate\": 1000000000, \"burst\": 1000000000}"
  "$f/circuit-breaker.wasm={}"
  "$f/bulkhead.wasm={\"max_concurrent\": 1000000}"
  "$f/retry.wasm={\"mode\": \"envoy\"}"
  "$f/retry.wasm={}"
  "$f/timeout.wasm={\"mode\": \"envoy\", \"timeout\": \"15s\"}"
  "$f/timeout.wasm={\"timeout\": \"15s\"}"
  "$f/global-rate-limit.wasm={\"domain\": \"edge\", \"rate_limit_service\": {\"cluster\": \"rls\"}, \"rate_limits\": [{\"actions\": [{\"generic_key\": {\"descriptor_value\": \"all\"}}]}]}"
  "$f/health-check.wasm={\"targets\": [{\"cluster\": \"bench-cluster\"}]}"
  "$f/traffic-split.wasm={\"backends\": [{\"name\": \"v1\", \"weight\": 90}, {\"name\": \"v2\", \"weight\": 10}]}"
  "$f/fault-injection.wasm={\"abort\": {\"http_status\": 503, \"percentage\": 0}}"
)

echo "== 1. stream lifecycle through the host (context create, headers, body, log, done, delete)"
echo "   CPU each filter adds per request on its happy path (target for the pattern filters: <= 2 us);"
echo "   callout-mode filters (retry and timeout without mode, global-rate-limit) include their callout,"
echo "   answered in process"
cargo bench -q -p meshwork-wasm-host --bench stream_lifecycle -- "${happy_path[@]}" 2>/dev/null

echo
echo "== 2. one proxy hop vs nginx (targets: meshwork hop <= 1.0x nginx CPU/request; measure adds <= 1.5 us;"
echo "   bounded buffering costs <= 3% of throughput); noop is a filter that does nothing, the price of the"
echo "   filter path and a wasm context alone"
python3 scripts/bench_hop.py --filters measure "$root/target/test-filters/noop.wasm" "$@"

echo
echo "== 3. instructions per stream each filter adds (callgrind; does not move with the machine's load)"
if command -v valgrind >/dev/null; then
  scripts/count_filter_instructions.sh "${happy_path[@]}"
else
  echo "   (valgrind is not installed: skipped)"
fi

echo
echo "== 4. the load generator's own cost: meshwork load vs wrk and h2load, requests per CPU-second (target >= 1.0x wrk)"
python3 scripts/bench_load.py

echo
echo "== 5. TLS and gRPC: a TLS 1.3 hop and new handshakes vs nginx, a gRPC callout's cost (targets: TLS hop"
echo "   <= 1.0x nginx CPU/request, handshakes >= 1.0x nginx per CPU-second, gRPC callout adds <= 25 us)"
python3 scripts/bench_tls.py

echo
echo "== 6. eBPF at the node: packets/s through one veth pair with xdp-ratelimit (under its limit) vs an"
echo "   XDP_PASS program vs no program vs iptables hashlimit vs nftables limit (target: limiter >= 0.9x XDP_PASS)"
if [ "$(id -u)" -eq 0 ]; then
  scripts/bench_ebpf.sh
else
  echo "   (needs root for XDP, namespaces and firewall rules: skipped)"
fi

echo
echo "== 7. the catalog (targets: build + site < 10 s, publish < 30 s, start with three cached oci:// filters < 300 ms)"
python3 scripts/bench_catalog.py

echo
echo "== 8. federation: one owner exporting 10,000 services of 5 endpoints to 10 consumers (each a"
echo "   \`meshwork federation subscribe\` process) over mTLS gRPC on loopback: time to full sync, memory per"
echo "   consumer, propagation latency of 1,000 endpoint changes at 200/s, each to a different service"
"$root/target/release/meshwork" --log-level error federation bench
