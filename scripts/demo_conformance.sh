#!/usr/bin/env bash
# Part of `make demo`: the conformance suites (SMI, GAMMA MESH-HTTP, the Service Mesh Patterns)
# against meshwork, signed and verified, then the matrix of every target available here.
# Usage: scripts/demo_conformance.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/meshwork"
out="$root/target/conformance"
mkdir -p "$out"
key="$out/demo.key"
[ -f "$key" ] || "$bin" conformance keygen --out "$key" >/dev/null

"$bin" conformance run --target meshwork --report-dir "$out/meshwork" --sign-key "$key" | tail -n 12
echo
"$bin" conformance verify "$out/meshwork/attestation.dsse.json" --key "$key.pub"
echo
echo "== the same suites on every target this machine has (unsupported is not a failure)"
"$bin" conformance matrix --out "$out/matrix" | sed -n '/^|/p; /divergence/p'
echo
echo "reports:     $out/meshwork (GAMMA ConformanceReport, JUnit, Meshery SMI, summary)"
echo "attestation: $out/meshwork/attestation.dsse.json"
echo "verify:      $bin conformance verify $out/meshwork/attestation.dsse.json --key $key.pub"
echo "matrix:      $out/matrix/matrix.html (meshwork catalog site --conformance $out/matrix links it)"
