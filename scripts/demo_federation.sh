#!/usr/bin/env bash
# Part of `make demo` (alone: `make demo-federation`): Hamlet federation between two meshes, each
# in a network namespace of its own, joined by a veth pair (198.51.100.0/24, TEST-NET-2):
#  - mesh A (198.51.100.1): the sample app, a meshwork ingress that takes only mTLS clients
#    from the federation CA, and `meshwork federation serve` exporting the app as
#    echo.mesh-a.example;
#  - mesh B (198.51.100.2): a meshwork sidecar whose `federation:` section follows A.
# A client in B reaches A's app by that name; a service A adds becomes reachable, one A removes
# answers 503 with the reason. Needs root (namespaces); stops and removes everything it starts.
# Usage: scripts/demo_federation.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/meshwork"
if [ "$(id -u)" -ne 0 ]; then
  echo "   (needs root for network namespaces: skipped)"
  exit 0
fi
a="mw-demo-a-$$"
b="mw-demo-b-$$"
A=198.51.100.1
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Deleting a namespace deletes its end of the veth pair, and so the pair.
  ip netns del "$a" 2>/dev/null || true
  ip netns del "$b" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 1" INT TERM   # so that the EXIT trap runs (and removes the namespaces) on Ctrl-C

# start NAME CMD…: runs CMD and waits for its first line.
source "$(dirname "$0")/demolib.sh"

# get HOST PATH: a request from mesh B through B's sidecar; prints the status, then the body.
if command -v curl > /dev/null; then
  get() {
    ip netns exec "$b" curl -s -m 5 -o "$work/body" -w '%{http_code}\n' -H "Host: $1" "http://127.0.0.1:15001$2" || echo 000
    cat "$work/body" 2>/dev/null || true
  }
else
  get() {
    ip netns exec "$b" python3 - "$1" "$2" <<'EOF'
import sys, urllib.error, urllib.request
req = urllib.request.Request("http://127.0.0.1:15001" + sys.argv[2], headers={"Host": sys.argv[1]})
try:
    r = urllib.request.urlopen(req, timeout=5)
    status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except OSError:
    status, body = 0, b""
print(status)
sys.stdout.write(body.decode(errors="replace"))
EOF
  }
fi
status() { get "$1" "$2" | sed -n 1p; }
# until STATUS HOST PATH: waits (at most 10 s) until the request gets STATUS; prints the ms taken.
until_status() {
  local t0=$(date +%s%N)
  for _ in $(seq 1 500); do
    if [ "$(status "$2" "$3")" = "$1" ]; then echo $(( ($(date +%s%N) - t0) / 1000000 )); return 0; fi
    sleep 0.02
  done
  echo "demo: $2$3 never answered $1; the sidecar said:" >&2
  cat "$work/sidecar.err" >&2
  exit 1
}

echo "== two meshes: network namespaces $a ($A) and $b (198.51.100.2), one veth pair"
ip netns add "$a"
ip netns add "$b"
ip link add "mwda$$" netns "$a" type veth peer name "mwdb$$" netns "$b"
for x in "$a mwda$$ $A" "$b mwdb$$ 198.51.100.2"; do
  set -- $x
  ip -n "$1" addr add "$3/24" dev "$2"
  ip -n "$1" link set "$2" up
  ip -n "$1" link set lo up
done

echo "== certificates: one federation CA, a certificate per mesh (meshwork federation certs)"
"$bin" federation certs --out "$work/certs" --mesh mesh-a --mesh mesh-b | sed "s|^$work/|   |"
c=certs   # paths in the files below are relative to the file

start app-a ip netns exec "$a" "$bin" upstream --listen 127.0.0.1:0 --name app-a
app=$(grep -o "http://127.0.0.1:[0-9]*" "$work/app-a.out" | head -1)
cat > "$work/ingress.yaml" <<EOF
listeners:
  - name: ingress
    listen: $A:8443
    listener:
      tls:
        certificates: [{cert: $c/mesh-a.pem, key: $c/mesh-a-key.pem}]
        client_ca: $c/ca.pem
        require_client_certificate: true
    routes:
      - {hosts: [echo.mesh-a.example, extra.mesh-a.example], cluster: app-a}
      - {prefix: /, direct_response: {status: 404, body: "no such service at mesh A's ingress\n"}}
clusters:
  - {name: app-a, endpoints: ["${app#http://}"]}
EOF
start ingress ip netns exec "$a" "$bin" run --config "$work/ingress.yaml"

service() {  # service NAME: an exported service reached through A's ingress
  cat <<EOF
  - name: $1
    description: mesh A's sample app, through A's mTLS ingress
    fqdn: $1.mesh-a.example
    endpoints: [{address: $A, port: 8443, labels: [ingress]}]
    sans: [spiffe://mesh-a/federation]
    instances: [{id: http, protocol: HTTP, endpoint_selector: [ingress]}]
EOF
}
exports() {  # exports NAME...: rewrites A's owner file (whole, then renamed into place)
  {
    cat <<EOF
mesh: mesh-a
listen: $A:9443
tls: {ca: $c/ca.pem, cert: $c/mesh-a.pem, key: $c/mesh-a-key.pem}
consumers: [spiffe://mesh-b/federation]
services:
EOF
    for s in "$@"; do service "$s"; done
  } > "$work/owner.yaml.tmp"
  mv "$work/owner.yaml.tmp" "$work/owner.yaml"
}
exports echo
start owner ip netns exec "$a" "$bin" federation serve --config "$work/owner.yaml"
echo "== mesh A: app-a on $app, ingress https://$A:8443 (mTLS, hosts: routes), owner $A:9443"
sed 's/^/   /' "$work/owner.yaml"

cat > "$work/sidecar.yaml" <<EOF
listen: 127.0.0.1:15001
admin: 127.0.0.1:15000
route: {direct_response: {status: 404, body: "not a service mesh B knows\n"}}
federation:
  mesh: mesh-b
  tls: {ca: $c/ca.pem, cert: $c/mesh-b.pem, key: $c/mesh-b-key.pem}
  owners: [{name: mesh-a, address: "$A:9443", server_name: mesh-a}]
EOF
# Debug for the federation module: one line per imported service (info sums them up).
start sidecar ip netns exec "$b" env RUST_LOG=info,meshwork::federation=debug "$bin" run --config "$work/sidecar.yaml"
echo "== mesh B: a sidecar on 127.0.0.1:15001 following mesh A"
sed -n '/^federation:/,$p' "$work/sidecar.yaml" | sed 's/^/   /'

echo
echo "== from B: Host echo.mesh-a.example through B's sidecar"
ms=$(until_status 200 echo.mesh-a.example /hello)
get echo.mesh-a.example /hello > "$work/reply"
python3 - "$work/reply" "$ms" <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().split("\n", 1)
body = json.loads(lines[1])
print(f"   {lines[0]} from A's app (imported {sys.argv[2]} ms after the sidecar started): "
      f"{body['method']} {body['path']}, Host {body['headers']['host']}, "
      f"x-forwarded-for {body['headers'].get('x-forwarded-for', '?')}")
EOF
echo "   Host unknown.mesh-a.example: $(status unknown.mesh-a.example /) (falls through to B's own routes)"
if command -v curl > /dev/null; then
  code=$(ip netns exec "$b" curl -sk -m 5 -o /dev/null -w '%{http_code}' -H 'Host: echo.mesh-a.example' "https://$A:8443/" || true)
  echo "   straight to A's ingress without a certificate from the federation CA: ${code:-000} (no TLS session)"
fi

echo
echo "== A exports a second service, extra (its owner file changes; the owner sends the difference)"
exports echo extra
ms=$(until_status 200 extra.mesh-a.example /)
echo "   extra.mesh-a.example answers 200 in B $ms ms after A's file changed"

echo
echo "== A withdraws extra"
exports echo
ms=$(until_status 503 extra.mesh-a.example /)
echo "   after $ms ms (the owner looks at its file every 0.5 s): $(get extra.mesh-a.example / | tr '\n' ' ')"
echo "   echo.mesh-a.example still: $(status echo.mesh-a.example /)"

echo
echo "== the owner (mesh A) said"
sed 's/^/   /' "$work/owner.out"
echo "== the sidecar (mesh B) said"
grep -h "federation: " "$work/sidecar.err" | sed -E 's/^.* federation: /   /'
echo "== the sidecar's federation stats (admin /stats/prometheus)"
ip netns exec "$b" python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:15000/stats/prometheus", timeout=5).read().decode())' |
  grep "^meshwork_federation" | sed 's/^/   /' || true
