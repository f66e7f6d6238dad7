#!/usr/bin/env python3
"""One proxy hop, measured: meshwork (no filter, and with each filter chain) against nginx.

Every scenario forwards to the same upstream (an nginx instance returning a short body) and is
driven closed-loop by wrk. The proxy under test is pinned to one CPU, wrk and the upstream to
the other, and scenarios are interleaved over several rounds; medians are reported. CPU per
request is the proxy's user+system time (from /proc) divided by the requests wrk completed.

A second table prices bounded buffering: the same chain with the default buffer limits (1 MiB)
and with limits so large they never bind (1 GiB), for GETs and for 256 KiB uploads, as a ratio of
throughput (target: bounded costs <= 3%).

Usage: scripts/bench_hop.py [--rounds 3] [--seconds 5] [--connections 16] [--output json]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

from benchlib import MESHWORK, ROOT, TICK, cpu_ticks, children, free_port, nginx_conf, run_wrk, wait_port

class Scenario:
    def __init__(self, name, port, pids, script=None):
        self.name, self.port, self.pids, self.script = name, port, pids, script
        self.rps, self.cpu_us = [], []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--filters", nargs="*", default=["measure"], help="filters (target/filters/<name>.wasm) to chain, one scenario each")
    ap.add_argument("--output", choices=["text", "json"], default="text")
    args = ap.parse_args()
    for tool in ["nginx", "wrk", "taskset"]:
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is missing (run make setup)")
    if not os.path.exists(MESHWORK):
        sys.exit("bench: target/release/meshwork is missing (run make build)")

    work = tempfile.mkdtemp(prefix="meshwork-bench-")
    procs = []

    def start(cmd, cpu):
        p = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "stderr.log"), "a"))
        procs.append(p)
        return p

    try:
        up = free_port()
        start(["nginx", "-p", work, "-c", nginx_conf(work, "upstream", f'server {{ listen 127.0.0.1:{up}; keepalive_requests 1000000; location / {{ return 200 "hello from upstream\\n"; }} }}')], 0)
        wait_port(up, "bench")
        scenarios = []
        hop = free_port()
        nginx = start(["nginx", "-p", work, "-c", nginx_conf(work, "hop", (
            f"upstream app {{ server 127.0.0.1:{up}; keepalive 64; keepalive_requests 1000000; }} "
            f"server {{ listen 127.0.0.1:{hop}; keepalive_requests 1000000; location / {{ proxy_pass http://app; "
            'proxy_http_version 1.1; proxy_set_header Connection ""; } }'))], 1)
        wait_port(hop, "bench")
        scenarios.append(Scenario("nginx hop", hop, [nginx.pid] + children(nginx.pid)))
        def meshwork(chain, buffer_limit=None):
            port = free_port()
            config = os.path.join(work, f"meshwork-{port}.yaml")
            with open(config, "w") as f:
                f.write(f"listen: 127.0.0.1:{port}\nworkers: 1\ncache_dir: {work}/cache\n")
                if buffer_limit:
                    f.write(f"listener: {{buffer_limit: {buffer_limit}}}\nfilter_chain: {{buffer_limit: {buffer_limit}}}\n")
                f.write(f"clusters: [{{name: app, endpoints: [\"127.0.0.1:{up}\"]}}]\nroute: {{cluster: app}}\n")
                if chain:
                    f.write("filters:\n")
                    for name in chain:
                        module = name if "/" in name else f"{ROOT}/target/filters/{name}.wasm"
                        label = os.path.splitext(os.path.basename(module))[0]
                        f.write(f"  - {{name: {label}, module: {module}}}\n")
            p = start([MESHWORK, "run", "--config", config], 1)
            wait_port(port, "bench")
            return port, p

        for chain in [[]] + [[f] for f in args.filters]:
            port, p = meshwork(chain)
            labels = [os.path.splitext(os.path.basename(c))[0] for c in chain]
            scenarios.append(Scenario("meshwork hop" + (f" + {'+'.join(labels)}" if chain else " (no filter)"), port, [p.pid]))
        # Bounded buffering's price: default limits vs limits that never bind, GETs and uploads.
        upload = os.path.join(work, "upload.lua")
        with open(upload, "w") as f:
            f.write('wrk.method = "POST"\nwrk.body = string.rep("x", 256 * 1024)\n')
        chain = args.filters[:1]
        buffering = []
        for label, script in [("GET", None), ("POST 256 KiB", upload)]:
            pair = []
            for limit in [None, "1GiB"]:
                port, p = meshwork(chain, limit)
                pair.append(Scenario(f"{label}, limits {'1 GiB' if limit else 'default'}", port, [p.pid], script))
            buffering.append(pair)

        def measure(s, seconds):
            before = cpu_ticks(s.pids)
            requests = run_wrk(f"http://127.0.0.1:{s.port}/", seconds, args.connections, s.script)
            used = cpu_ticks(s.pids) - before
            s.rps.append(requests / seconds)
            s.cpu_us.append(used / TICK * 1e6 / requests)

        everything = scenarios + [s for pair in buffering for s in pair]
        for s in everything:  # warm pools and caches
            run_wrk(f"http://127.0.0.1:{s.port}/", 1, args.connections, s.script)
        for r in range(args.rounds):
            for s in everything:
                measure(s, args.seconds)
            if args.output == "text":
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(scenarios[0].cpu_us)
    no_filter = statistics.median(scenarios[1].cpu_us)
    rows = []
    for s in scenarios:
        cpu = statistics.median(s.cpu_us)
        rows.append({
            "scenario": s.name,
            "requests_per_s": round(statistics.median(s.rps)),
            "cpu_us_per_request": round(cpu, 2),
            "vs_nginx_hop": round(cpu / base, 2),
            "added_vs_meshwork_no_filter_us": None if s is scenarios[0] or s is scenarios[1] else round(cpu - no_filter, 2),
        })
    costs = []
    for bounded, unbounded in buffering:
        ratio = statistics.median(bounded.rps) / statistics.median(unbounded.rps)
        costs.append({
            "workload": bounded.name.split(",")[0],
            "bounded_requests_per_s": round(statistics.median(bounded.rps)),
            "unbounded_requests_per_s": round(statistics.median(unbounded.rps)),
            "bounded_vs_unbounded": round(ratio, 3),
        })
    if args.output == "json":
        print(json.dumps({"rounds": args.rounds, "seconds": args.seconds, "connections": args.connections,
                          "results": rows, "buffering": costs}, indent=2))
        return
    print(f"\none proxy hop, closed loop, wrk -c{args.connections}, median of {args.rounds} x {args.seconds}s (proxy pinned to CPU 1):")
    print(f"{'scenario':<34}{'req/s':>10}{'CPU us/req':>12}{'vs nginx':>10}{'added us':>10}")
    for r in rows:
        added = "" if r["added_vs_meshwork_no_filter_us"] is None else f"{r['added_vs_meshwork_no_filter_us']:+.2f}"
        print(f"{r['scenario']:<34}{r['requests_per_s']:>10}{r['cpu_us_per_request']:>12.2f}{r['vs_nginx_hop']:>9.2f}x{added:>10}")
    print(f"\nbounded buffering (with {'+'.join(args.filters[:1]) or 'no filter'}): default limits vs 1 GiB limits, throughput (target: >= 0.97x)")
    print(f"{'workload':<16}{'bounded req/s':>15}{'1 GiB req/s':>14}{'ratio':>8}")
    for c in costs:
        print(f"{c['workload']:<16}{c['bounded_requests_per_s']:>15}{c['unbounded_requests_per_s']:>14}{c['bounded_vs_unbounded']:>7.3f}x")


if __name__ == "__main__":
    main()
