#!/usr/bin/env bash
# Part of `make demo`: the demo's filters (measure, local-rate-limit) as Istio WasmPlugins
# written by `meshwork deploy`, then run as an Istio sidecar would run them
# (`meshwork run --istio`) in front of the sample app, and a few requests through it.
# Usage: scripts/demo_deploy.sh SAMPLE_APP_URL
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/meshwork"
app=${1:?usage: demo_deploy.sh SAMPLE_APP_URL}
work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

{
  "$bin" deploy filter/measure --mesh istio --namespace shop --selector app=shop
  echo "---"
  "$bin" deploy filter/local-rate-limit --mesh istio --namespace shop --selector app=shop \
    --set rate=5 --set burst=5 --set period=1m
} > "$work/plugins.yaml"
sed -n '1,200p' "$work/plugins.yaml"

"$bin" run --istio "$work/plugins.yaml" --upstream "${app#http://}" --workload-labels app=shop \
  --namespace shop --listen 127.0.0.1:0 > "$work/run.out" 2> "$work/run.err" &
pid=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$work/run.out" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/run.err" >&2; exit 1; }
  sleep 0.1
done
sidecar=$(grep -o "http://127.0.0.1:[0-9]*" "$work/run.out" | head -1)
echo "== meshwork run --istio: the plugins as the shop workload's sidecar (inbound on $sidecar)"
codes=""
for _ in $(seq 1 7); do
  codes+="$(curl -s -o /dev/null -w '%{http_code}' -H 'x-user: demo' "$sidecar/api/items") "
done
echo "   7 requests from one user against 5 a minute: $codes"
