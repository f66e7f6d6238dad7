#!/usr/bin/env bash
# meshwork demo: the sample app behind `meshwork run` with the measure and local-rate-limit
# filters on two workers, some traffic, and what the filters saw; then retries and a circuit
# breaker at work (scripts/demo_patterns.sh), a short benchmark, the catalog published to a
# local registry and its web site (scripts/demo_catalog.sh), the demo filters as Istio WasmPlugins
# (scripts/demo_deploy.sh), the conformance suites (scripts/demo_conformance.sh), and two meshes
# federated over Hamlet in network namespaces (scripts/demo_federation.sh, as root). Stops
# everything it starts.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/meshwork"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME CMD…: runs CMD and waits for its first line.
source "$(dirname "$0")/demolib.sh"
addr() { grep -o "$2http://127.0.0.1:[0-9]*" "$work/$1.out" | head -1 | sed "s|^$2||"; }

echo "== starting the sample app and meshwork (2 workers, filters: measure, local-rate-limit)"
start upstream "$bin" upstream --listen 127.0.0.1:0 --name app
app=$(addr upstream "")
cat > "$work/meshwork.yaml" <<EOF
listen: 127.0.0.1:0
admin: 127.0.0.1:0
workers: 2
clusters: [{name: app, endpoints: ["${app#http://}"]}]
route: {cluster: app, name: shop}
filters:
  - name: measure
    module: $root/target/filters/measure.wasm
    configuration: {routes: [{name: api, prefix: /api/}, {name: static, prefix: /static/}]}
  - name: ratelimit
    module: $root/target/filters/local-rate-limit.wasm
    configuration: {rate: 20, period: 1s, burst: 10, key: {header: x-user}}
EOF
start meshwork "$bin" run --config "$work/meshwork.yaml"
proxy=$(addr meshwork "listening on ")
admin=$(addr meshwork "admin on ")
echo "   sample app $app, proxy $proxy, admin $admin"

echo "== sending traffic: alice hammers /api/items, bob calls a slow endpoint, carol fetches assets, dave hits a broken one"
requests() {
  for _ in $(seq 1 120); do echo "alice /api/items?delay=5ms"; done
  for _ in $(seq 1 20); do echo "bob /api/reports?delay=40ms"; done
  for _ in $(seq 1 15); do echo "carol /static/app.js?size=4096"; done
  for _ in $(seq 1 8); do echo "dave /api/orders?status=503"; done
}
requests | xargs -P 8 -L 1 sh -c 'curl -s -o /dev/null -w "%{http_code} $0\n" -H "x-user: $0" "'"$proxy"'$1"' > "$work/results.txt"
curl -s -D - -o /dev/null -H "x-user: erin" "$proxy/api/items" | grep -i "^server-timing" | sed 's/^/   a response carries /' || true

curl -s "$admin/stats?format=json" > "$work/stats.json"
python3 - "$work/results.txt" "$work/stats.json" <<'EOF'
import collections, json, sys
results = collections.defaultdict(collections.Counter)
for line in open(sys.argv[1]):
    code, user = line.split()
    results[user][code] += 1
print("\n== what the clients got (status: count)")
for user in sorted(results):
    print(f"   {user:<6} " + "  ".join(f"{c}: {n}" for c, n in sorted(results[user].items())))
stats = json.load(open(sys.argv[2]))["stats"]
def find(name):
    return [s for s in stats if s["name"] == name]
print("\n== local-rate-limit (shared by both workers through CAS on shared data)")
for s in find("meshwork_local_rate_limit_requests_total"):
    print(f"   {s['tags']['outcome']:<10} {s['value']}")
print("\n== measure: requests by route and status class")
rows = collections.defaultdict(dict)
for s in find("meshwork_measure_requests_total"):
    if s["value"]:
        rows[s["tags"]["route"]][s["tags"]["class"]] = s["value"]
for route, classes in sorted(rows.items()):
    print(f"   {route:<8} " + "  ".join(f"{c}: {n}" for c, n in sorted(classes.items())))
print("\n== measure: upstream latency by route (filter-defined histogram, microseconds)")
print(f"   {'route':<8}{'count':>7}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
for s in sorted(find("meshwork_measure_upstream_latency_us"), key=lambda s: s["tags"]["route"]):
    q = {round(x["quantile"], 3): x["value"] for x in s["quantiles"]}
    print(f"   {s['tags']['route']:<8}{s['count']:>7}{q[0.5]:>9}{q[0.9]:>9}{q[0.99]:>9}{s['max']:>9}")
workers = {s["tags"]["worker"]: s["value"] for s in find("meshwork_downstream_cx_total")}
print(f"\n== connections per worker: {workers}")
EOF
echo
echo "== patterns: retries and a circuit breaker in front of a flaky service and a dead one"
"$root/scripts/demo_patterns.sh" "$app"

echo; "$root/scripts/demo_bench.sh" "$app"  # direct vs through meshwork with these filters: SMP results, table, SVG
echo
echo "== the catalog: published to a local OCI registry, signed, a filter run from it, the web site"
"$root/scripts/demo_catalog.sh" "$app"
echo
echo "== metrics in Prometheus format: $admin/stats/prometheus"
echo
echo "== deploy: the demo's filters as Istio WasmPlugins (meshwork deploy), run as a sidecar (meshwork run --istio)"
"$root/scripts/demo_deploy.sh" "$app"
echo
echo "== conformance: SMI, GAMMA MESH-HTTP and the patterns against meshwork, signed; every target compared"
"$root/scripts/demo_conformance.sh"
echo
echo "== federation: two meshes in network namespaces, B reaching A's app by the name A exports (Hamlet, mTLS)"
"$root/scripts/demo_federation.sh"
