#!/usr/bin/env bash
# Installs what meshwork's build, tests, demo and benchmarks need. Idempotent: each step checks
# first. Debian 12; run as root (CI is) or with sudo available.
set -euo pipefail

say() { printf 'setup: %s\n' "$*"; }

for target in wasm32-wasip1 wasm32-unknown-unknown; do
  if ! rustup target list --installed | grep -qx "$target"; then
    say "adding rust target $target"
    rustup target add "$target"
  fi
done

# Debian packages: node/npm (AssemblyScript test filter), wrk, h2load and nginx (benchmarks),
# curl (demo), redis-server (the global rate limit's shared store in tests), valgrind (the
# bench's instruction counts).
need=()
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null && [ -x "$(command -v nginx)" ] || need+=(nginx-light)
command -v curl >/dev/null || need+=(curl)
command -v redis-server >/dev/null || need+=(redis-server)
command -v valgrind >/dev/null || need+=(valgrind)
# protoc: the gRPC APIs (host-runner/grpc-api) are generated from .proto files at build time.
command -v protoc >/dev/null || need+=(protobuf-compiler)
# eBPF (make ebpf, its tests and bench): LLVM 22 for bpf-linker, bpftool to check attachments,
# iproute2 for namespaces, ethtool for the tests' delay line, iptables and nftables for the
# bench's comparison.
for pkg in llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
command -v bpftool >/dev/null || need+=(bpftool)
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v nft >/dev/null || need+=(nftables)
command -v ethtool >/dev/null || need+=(ethtool)
# The catalog: an OCI registry (distribution 2.8) and skopeo for the publishing tests, htpasswd
# for the registry's auth, chromium and its WebDriver for the site's browser tests.
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# Conformance: HAProxy is one of the targets (nginx, above, is another).
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "installing Debian packages: ${need[*]}"
  $sudo apt-get update -qq
  # Installing nginx must not start a system service: the benchmark runs its own instance.
  RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  pkill -x nginx 2>/dev/null || true
  pkill -x haproxy 2>/dev/null || true
  # Nor Redis: tests start private instances on free ports; stop the system one on 6379.
  if [[ " ${need[*]} " == *" redis-server "* ]]; then
    $sudo systemctl disable --now redis-server >/dev/null 2>&1 || $sudo service redis-server stop >/dev/null 2>&1 || true
  fi
  # Nor the registry: tests and the demo start their own on free ports.
  if [[ " ${need[*]} " == *" docker-registry "* ]]; then
    $sudo systemctl disable --now docker-registry >/dev/null 2>&1 || $sudo service docker-registry stop >/dev/null 2>&1 || true
  fi
fi

# eBPF toolchain: the nightly pinned in the BPF crate (its LLVM must be bpf-linker's, 22; a
# floating nightly breaks the link) with rust-src for -Z build-std, and bpf-linker built
# against Debian's LLVM 22.
ebpf_toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' "$(dirname "$0")/../ebpf/meshwork-ebpf-programs/rust-toolchain.toml")
if ! rustup component list --installed --toolchain "$ebpf_toolchain" 2>/dev/null | grep -q '^rust-src'; then
  say "installing rust $ebpf_toolchain with rust-src (eBPF programs)"
  rustup toolchain install "$ebpf_toolchain" --profile minimal --component rust-src
fi
if ! bpf-linker --version 2>/dev/null | grep -q ' 0\.13\.0'; then
  say "building bpf-linker 0.13.0 against LLVM 22 (about 2 minutes)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 --locked --no-default-features --features llvm-22
fi
# The catalog's playground is compiled with wasm-bindgen; its CLI must be the version of the
# wasm-bindgen crate in Cargo.lock. (Not --locked: the CLI's lock file pins a webpki-roots
# release that crates.io mirrors may lack; any compatible release builds it.)
wasm_bindgen=$(sed -n '/^name = "wasm-bindgen"$/{n;s/^version = "\(.*\)"/\1/p}' "$(dirname "$0")/../Cargo.lock")
if ! wasm-bindgen --version 2>/dev/null | grep -q " $wasm_bindgen\$"; then
  say "building wasm-bindgen-cli $wasm_bindgen (about 3 minutes)"
  cargo install wasm-bindgen-cli --version "$wasm_bindgen"
fi
say "ok"
