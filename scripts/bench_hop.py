#!/usr/bin/env python3
"""One proxy hop, measured: meshwork (no filter, and with each filter chain) against nginx.

Every scenario forwards to the same upstream (an nginx instance returning a short body) and is
driven closed-loop by wrk. The proxy under test is pinned to one CPU, wrk and the upstream to
the other, and scenarios are interleaved over several rounds; medians are reported. CPU per
request is the proxy's user+system time (from /proc) divided by the requests wrk completed.

Usage: scripts/bench_hop.py [--rounds 3] [--seconds 5] [--connections 16] [--output json]
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

from benchlib import MESHWORK, ROOT, free_port, wait_port

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]
    except OSError:
        return []


class Scenario:
    def __init__(self, name, port, pids):
        self.name, self.port, self.pids = name, port, pids
        self.rps, self.cpu_us = [], []


def nginx_conf(directory, name, body):
    path = os.path.join(directory, f"{name}.conf")
    with open(path, "w") as f:
        f.write(
            f"worker_processes 1; daemon off; pid {directory}/{name}.pid; error_log {directory}/{name}.err warn;\n"
            "events { worker_connections 4096; }\n"
            f"http {{ access_log off; {body} }}\n"
        )
    return path


def run_wrk(port, seconds, connections):
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"bench: {errors.group(1)} error responses on port {port}:\n{out}")
    return requests


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
        chains = [[]] + [[f] for f in args.filters]
        for chain in chains:
            port = free_port()
            config = os.path.join(work, f"meshwork-{port}.yaml")
            with open(config, "w") as f:
                f.write(f"listen: 127.0.0.1:{port}\nworkers: 1\ncache_dir: {work}/cache\n")
                f.write(f"clusters: [{{name: app, endpoints: [\"127.0.0.1:{up}\"]}}]\nroute: {{cluster: app}}\n")
                if chain:
                    f.write("filters:\n")
                    for name in chain:
                        module = name if "/" in name else f"{ROOT}/target/filters/{name}.wasm"
                        label = os.path.splitext(os.path.basename(module))[0]
                        f.write(f"  - {{name: {label}, module: {module}}}\n")
            p = start([MESHWORK, "run", "--config", config], 1)
            wait_port(port, "bench")
            labels = [os.path.splitext(os.path.basename(c))[0] for c in chain]
            scenarios.append(Scenario("meshwork hop" + (f" + {'+'.join(labels)}" if chain else " (no filter)"), port, [p.pid]))
        for s in scenarios:  # warm pools and caches
            run_wrk(s.port, 1, args.connections)
        for r in range(args.rounds):
            for s in scenarios:
                before = cpu_ticks(s.pids)
                requests = run_wrk(s.port, args.seconds, args.connections)
                used = cpu_ticks(s.pids) - before
                s.rps.append(requests / args.seconds)
                s.cpu_us.append(used / TICK * 1e6 / requests)
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
    if args.output == "json":
        print(json.dumps({"rounds": args.rounds, "seconds": args.seconds, "connections": args.connections, "results": rows}, indent=2))
        return
    print(f"\none proxy hop, closed loop, wrk -c{args.connections}, median of {args.rounds} x {args.seconds}s (proxy pinned to CPU 1):")
    print(f"{'scenario':<34}{'req/s':>10}{'CPU us/req':>12}{'vs nginx':>10}{'added us':>10}")
    for r in rows:
        added = "" if r["added_vs_meshwork_no_filter_us"] is None else f"{r['added_vs_meshwork_no_filter_us']:+.2f}"
        print(f"{r['scenario']:<34}{r['requests_per_s']:>10}{r['cpu_us_per_request']:>12.2f}{r['vs_nginx_hop']:>9.2f}x{added:>10}")


if __name__ == "__main__":
    main()
