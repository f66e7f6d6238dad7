#!/usr/bin/env bash
# Installs what meshwork's build, tests, demo and benchmarks need. Idempotent: each step checks
# first. Debian 12; run as root (CI is) or with sudo available.
set -euo pipefail

say() { printf 'setup: %s\n' "$*"; }

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  say "adding rust target wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

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
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "installing Debian packages: ${need[*]}"
  $sudo apt-get update -qq
  # Installing nginx must not start a system service: the benchmark runs its own instance.
  RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  pkill -x nginx 2>/dev/null || true
  # Nor Redis: tests start private instances on free ports; stop the system one on 6379.
  if [[ " ${need[*]} " == *" redis-server "* ]]; then
    $sudo systemctl disable --now redis-server >/dev/null 2>&1 || $sudo service redis-server stop >/dev/null 2>&1 || true
  fi
fi
say "ok"
