#!/usr/bin/env bash
# Part of `make demo`: the catalog published to a local OCI registry (Debian's docker-registry),
# signed, a filter pulled back from it by `meshwork run` (digest- and signature-checked), and the
# catalog's web site with its playground written to target/catalog/site.
# Usage: scripts/demo_catalog.sh SAMPLE_APP_URL
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/meshwork"
app=${1:?usage: demo_catalog.sh SAMPLE_APP_URL}
work=$(mktemp -d)
out="$root/target/catalog"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
registry="127.0.0.1:$port"
cat > "$work/registry.yml" <<YAML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: $registry}
YAML
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do curl -sf "http://$registry/v2/" > /dev/null && break; sleep 0.1; done
echo "   a local OCI registry (docker-registry) on $registry"

cd "$root"
"$bin" catalog validate | sed 's/^/   /'
"$bin" catalog keygen --prefix "$work/release" > /dev/null
"$bin" catalog build --out "$out" | tail -1 | sed 's/^/   /'
"$bin" catalog publish --registry "$registry/meshwork" --sign "$work/release.key" --record "$out/published.json" > "$work/publish.out"
tail -1 "$work/publish.out" | sed 's/^/   /'
digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["items"]["filter/measure"]["references"]["compat"]["digest"])' "$out/published.json")
"$bin" catalog verify "$registry/meshwork/filters/measure:0.1.0" --key "$work/release.pub" | sed 's/^/   /'

cat > "$work/run.yaml" <<YAML
listen: 127.0.0.1:0
cache_dir: $work/cache
clusters: [{name: app, endpoints: ["${app#http://}"]}]
route: {cluster: app, name: shop}
filters:
  - name: measure
    root_id: measure
    module: oci://$registry/meshwork/filters/measure:0.1.0
    sha256: ${digest#sha256:}
YAML
"$bin" run --config "$work/run.yaml" --require-signature "$work/release.pub" > "$work/run.out" 2> "$work/run.err" &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/run.out" ] && break; sleep 0.1; done
proxy=$(grep -o "listening on http://127.0.0.1:[0-9]*" "$work/run.out" | sed 's/^listening on //') || { cat "$work/run.err"; exit 1; }
echo "   meshwork run with measure pulled from oci://$registry/meshwork/filters/measure:0.1.0 (signature verified):"
curl -s -D - -o /dev/null "$proxy/api/items" | tr -d '\r' | grep -i '^server-timing' | sed 's/^/     a response carries /'

echo "   the same filter for Istio (a WasmPlugin pinned to the manifest digest):"
sed 's/^/     /' <<YAML
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: measure}
spec:
  url: oci://$registry/meshwork/filters/measure:0.1.0
  sha256: ${digest#sha256:}
  pluginName: measure
YAML

"$bin" catalog check-policy "$work/run.yaml" | sed 's/^/   policies over that configuration: /'
"$bin" catalog site --out "$out/site" --index "$out/index.json" --published "$out/published.json" --playground "$root/target/playground" | sed 's/^/   /'
