#!/usr/bin/env bash
# Packets per second through one veth pair, in one run, with:
#   none          no program, no rule
#   xdp-pass      an XDP program that passes everything (the baseline)
#   xdp-ratelimit meshwork's limiter, one source, under its limit (every packet takes a token)
#   iptables      iptables hashlimit per source, same rate and burst
#   nftables      nftables per-source limit (dynamic set), same rate and burst
# A sender in a network namespace (CPU 0) blasts 64-byte UDP frames with sendmmsg; a receiver
# here (CPU 1) counts what is delivered with recvmmsg. Rounds interleave the setups; the median
# per setup is reported, with ratios to xdp-pass and to none, and the median of the per-round
# (paired) ratios xdp-ratelimit / xdp-pass, which drifts in the machine's load cancel out of.
# Delivered packets/s is bounded by the receiving socket and moves ±15% between rounds here, more
# than the limiter costs; so the kernel's own accounting of the two XDP programs (sysctl
# kernel.bpf_stats_enabled: run time and run count per program) gives the CPU each spends per
# packet, which does not depend on what bounds the throughput.
# Needs root, `make build`.
#
#   scripts/bench_ebpf.sh [SECONDS_PER_RUN] [ROUNDS]     (defaults 3 and 5)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-3}
ROUNDS=${2:-5}
# Same limit everywhere: far above what two shared cores push, so nothing is dropped and the
# cost of enforcing it (lookup, refill, take) is what is measured. 1M/s is hashlimit's ceiling.
RATE=1000000
BURST=100000
NS=mw-bench-ebpf
HOST_IF=mwbench0h
PEER_IF=mwbench0p
HOST_IP=198.19.0.1
PEER_IP=198.19.0.2
PORT=9999
MESHWORK=target/release/meshwork
FLOOD=target/release/examples/udp-flood
SETUPS=(none xdp-pass xdp-ratelimit iptables nftables)

say() { printf 'bench-ebpf: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { say "needs root (XDP, namespaces, iptables)"; exit 1; }
[ -x "$MESHWORK" ] && [ -f target/ebpf/xdp-ratelimit.o ] || { say "run make build first"; exit 1; }
cargo build --release -q -p meshwork-ebpf --example udp-flood

stats_before=$(sysctl -n kernel.bpf_stats_enabled)
cleanup() {
  sysctl -qw kernel.bpf_stats_enabled="$stats_before" || true
  $MESHWORK ebpf unload bench-xdp >/dev/null 2>&1 || true
  iptables -D INPUT -i $HOST_IF -p udp -m hashlimit --hashlimit-above $RATE/sec --hashlimit-burst $BURST \
    --hashlimit-mode srcip --hashlimit-name mwbench -j DROP 2>/dev/null || true
  nft delete table inet mwbench 2>/dev/null || true
  ip netns del $NS 2>/dev/null || true
  ip link del $HOST_IF 2>/dev/null || true
}
trap cleanup EXIT
cleanup

ip netns add $NS
ip link add $HOST_IF type veth peer name $PEER_IF
ip link set $PEER_IF netns $NS
ip addr add $HOST_IP/24 dev $HOST_IF
ip link set $HOST_IF up
ip -n $NS addr add $PEER_IP/24 dev $PEER_IF
ip -n $NS link set $PEER_IF up
ip -n $NS link set lo up
# Static neighbours: no ARP in the measurement.
ip -n $NS neigh replace $HOST_IP lladdr "$(cat /sys/class/net/$HOST_IF/address)" dev $PEER_IF nud permanent
ip neigh replace $PEER_IP lladdr "$(ip netns exec $NS cat /sys/class/net/$PEER_IF/address)" dev $HOST_IF nud permanent

setup() {
  case $1 in
    none) ;;
    xdp-pass) prog_id=$($MESHWORK ebpf load xdp-pass --iface $HOST_IF --pin --name bench-xdp --output json | ids) ;;
    xdp-ratelimit)
      prog_id=$($MESHWORK ebpf load xdp-ratelimit --iface $HOST_IF --pin --name bench-xdp \
        --config "{rate: $RATE, burst: $BURST}" --output json | ids) ;;
    iptables)
      iptables -I INPUT -i $HOST_IF -p udp -m hashlimit --hashlimit-above $RATE/sec --hashlimit-burst $BURST \
        --hashlimit-mode srcip --hashlimit-name mwbench -j DROP ;;
    nftables)
      nft -f - <<EOF
table inet mwbench {
  set sources { type ipv4_addr; flags dynamic; timeout 60s; }
  chain input {
    type filter hook input priority 0;
    iifname "$HOST_IF" meta l4proto udp update @sources { ip saddr limit rate over $RATE/second burst $BURST packets } drop
  }
}
EOF
      ;;
  esac
}

ids() { sed -n 's/.*"program_ids":\[\([0-9]*\)\].*/\1/p'; }

# Nanoseconds per packet the program ran, from the kernel's statistics.
ns_per_packet() {
  bpftool -j prog show id "$1" | awk '{
    t = $0; sub(/.*"run_time_ns":/, "", t); sub(/[,}].*/, "", t)
    c = $0; sub(/.*"run_cnt":/, "", c); sub(/[,}].*/, "", c)
    if (c + 0 > 0) printf "%.1f", t / c; else print 0 }'
}

teardown() {
  case $1 in
    xdp-pass | xdp-ratelimit)
      ns[$1]="${ns[$1]:-} $(ns_per_packet "$prog_id")"
      $MESHWORK ebpf unload bench-xdp >/dev/null ;;
    iptables | nftables) cleanup_rules ;;
  esac
}

cleanup_rules() {
  iptables -D INPUT -i $HOST_IF -p udp -m hashlimit --hashlimit-above $RATE/sec --hashlimit-burst $BURST \
    --hashlimit-mode srcip --hashlimit-name mwbench -j DROP 2>/dev/null || true
  nft delete table inet mwbench 2>/dev/null || true
}

json_field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }

measure() {
  local out=target/bench-ebpf.recv
  taskset -c 1 $FLOOD recv $HOST_IP:$PORT $((SECONDS_PER_RUN + 2)) >$out &
  local recv_pid=$!
  for _ in $(seq 50); do grep -q ready $out 2>/dev/null && break; sleep 0.1; done
  ip netns exec $NS taskset -c 0 $FLOOD send $PEER_IP:0 $HOST_IP:$PORT "$SECONDS_PER_RUN" >/dev/null
  wait $recv_pid
  tail -1 $out | json_field pps
}

sysctl -qw kernel.bpf_stats_enabled=1
declare -A results ns
prog_id=""
paired=""
for round in $(seq "$ROUNDS"); do
  declare -A this=()
  for s in "${SETUPS[@]}"; do
    setup "$s"
    pps=$(measure)
    teardown "$s"
    results[$s]="${results[$s]:-} $pps"
    this[$s]=$pps
    say "round $round/$ROUNDS $s: $pps packets/s delivered"
  done
  paired="$paired $(awk -v m="${this[xdp-ratelimit]}" -v p="${this[xdp-pass]}" 'BEGIN { printf "%.4f", (p > 0 ? m / p : 0) }')"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo
echo "packets/s delivered through one veth pair (64-byte UDP, median of $ROUNDS runs of ${SECONDS_PER_RUN}s)"
printf '%-15s %12s %12s %10s\n' setup packets/s "vs xdp-pass" "vs none"
base_pass=$(echo "${results[xdp-pass]}" | median)
base_none=$(echo "${results[none]}" | median)
for s in "${SETUPS[@]}"; do
  m=$(echo "${results[$s]}" | median)
  awk -v s="$s" -v m="$m" -v p="$base_pass" -v n="$base_none" \
    'BEGIN { printf "%-15s %12.0f %11.2fx %9.2fx\n", s, m, m / p, m / n }'
done
echo "xdp-ratelimit / xdp-pass per round:$paired"
awk -v r="$(echo "$paired" | median)" 'BEGIN {
  printf "%s: xdp-ratelimit at %.2fx xdp-pass (median of paired rounds; target >= 0.90x)\n", (r >= 0.9 ? "target met" : "target missed"), r
}'
echo "CPU per packet inside the XDP program (kernel.bpf_stats_enabled, median of $ROUNDS runs):"
for s in xdp-pass xdp-ratelimit; do
  printf '  %-15s %6.1f ns\n' "$s" "$(echo "${ns[$s]}" | median)"
done
