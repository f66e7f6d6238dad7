#!/usr/bin/env bash
# Part of `make demo`: retries and a circuit breaker in front of a flaky service and a dead one.
# Usage: scripts/demo_patterns.sh SAMPLE_APP_URL   (the sample app `make demo` started)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/meshwork"
app=${1:?usage: demo_patterns.sh SAMPLE_APP_URL}
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A port nothing listens on: every connect to the payments cluster fails.
closed=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/patterns.yaml" <<YAML
listen: 127.0.0.1:0
workers: 2
clusters:
  - {name: app, endpoints: ["${app#http://}"]}
  - {name: payments, endpoints: ["127.0.0.1:$closed"]}
routes:
  - {prefix: /payments/, cluster: payments, name: payments}
  - {prefix: /, cluster: app, name: shop}
filters:
  - name: breaker
    module: $root/target/filters/circuit-breaker.wasm
    configuration: {consecutive_failures: 5, cool_down: 10s}
  - name: retry
    module: $root/target/filters/retry.wasm
    configuration: {mode: envoy, max_retries: 2, retry_on: [5xx, connect-failure], budget: {ratio: 2.0, min_per_second: 20}}
YAML
"$bin" run --config "$work/patterns.yaml" > "$work/out" 2> "$work/err" &
pid=$!
for _ in $(seq 1 100); do
  [ -s "$work/out" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/err" >&2; exit 1; }
  sleep 0.1
done
proxy=$(grep -o "listening on http://127.0.0.1:[0-9]*" "$work/out" | sed 's/^listening on //')
echo "   meshwork $proxy with filters [circuit-breaker, retry (envoy mode: meshwork's router retries)]"

curl -s -X POST "$app/stats/reset" > /dev/null
echo "   /api/orders fails twice for every order, then answers; clients only see the answers:"
for i in $(seq 1 6); do
  curl -s -o /dev/null -D - "$proxy/api/orders?status=503&fail_first=2&key=order-$i" | tr -d '\r' |
    awk -v i="$i" '/^HTTP/ {code = $2} /^x-meshwork-attempts/ {a = $2} END {printf "     order %s: %s after %s attempts\n", i, code, a}'
done
seen=$(curl -s "$app/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["requests_total"])')
echo "     (the sample app saw $seen requests for those 6 orders)"

echo "   /payments/ is down; the breaker opens after 5 failed requests and then answers at once:"
for i in $(seq 1 8); do
  curl -s -o /dev/null -D - -w 'time=%{time_total}\n' "$proxy/payments/charge" | tr -d '\r' |
    awk -v i="$i" '
      /^HTTP/ {code = $2}
      /^x-meshwork-circuit:/ {state = $2}
      /^x-meshwork-circuit-reason:/ {reason = $2}
      /^x-meshwork-attempts:/ {tries = $2}
      /^time=/ {split($0, t, "="); ms = t[2] * 1000}
      END {printf "     charge %s: %s in %5.1f ms  %s\n", i, code, ms,
                  (state == "" ? "after " tries " connect attempts" : "circuit " state ": " reason)}'
done
