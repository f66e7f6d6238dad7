#!/usr/bin/env python3
"""The load generator's own cost: requests per CPU-second of `meshwork load` against wrk and
h2load, closed loop, in one run against the same local target.

The target is an nginx returning a short body, pinned to CPU 0; every load generator is pinned
to CPU 1 with one thread and the same connections, and the generators are interleaved over
several rounds (medians are reported). A generator's CPU is its own user+system time (rusage
of the child), so requests per CPU-second is what one core of load generation buys.

Usage: scripts/bench_load.py [--rounds 3] [--seconds 5] [--connections 32] [--output json]
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

from benchlib import MESHWORK, ROOT, free_port, wait_port


def measured(cmd):
    """Runs cmd to completion; returns (stdout, CPU seconds it used)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"bench_load: {' '.join(cmd)} failed:\n{out.stderr}{out.stdout}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out.stdout, cpu


def wrk(url, seconds, connections):
    out, cpu = measured(["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url])
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"bench_load: wrk saw errors:\n{out}")
    return int(re.search(r"(\d+) requests in", out).group(1)), cpu


def h2load(url, seconds, connections):
    out, cpu = measured(["taskset", "-c", "1", "h2load", "--h1", "-t1", f"-c{connections}", f"-D{seconds}", url])
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not m or int(m.group(2)) or int(m.group(3)):
        sys.exit(f"bench_load: h2load saw failures:\n{out}")
    return int(m.group(1)), cpu


def meshwork(url, seconds, connections):
    out, cpu = measured(
        ["taskset", "-c", "1", MESHWORK, "load", url, "--max", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "-q", "--output", "json"]
    )
    r = json.loads(out)
    if r["errors_total"] or r["non_2xx_3xx"]:
        sys.exit(f"bench_load: meshwork load saw errors: {r['errors']} {r['status']}")
    return r["requests"], cpu


TOOLS = {"meshwork load": meshwork, "wrk": wrk, "h2load": h2load}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--output", choices=["text", "json"], default="text")
    args = ap.parse_args()
    for tool in ["nginx", "wrk", "h2load", "taskset"]:
        if not shutil.which(tool):
            sys.exit(f"bench_load: {tool} is missing (run make setup)")
    if not os.path.exists(MESHWORK):
        sys.exit("bench_load: target/release/meshwork is missing (run make build)")

    work = tempfile.mkdtemp(prefix="meshwork-bench-load-")
    port = free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(
            f"worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err warn;\n"
            "events { worker_connections 4096; }\n"
            f'http {{ access_log off; server {{ listen 127.0.0.1:{port}; keepalive_requests 100000000; '
            'location / { return 200 "hello from the target\\n"; } } }\n'
        )
    nginx = subprocess.Popen(["taskset", "-c", "0", "nginx", "-p", work, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    results = {name: {"rps": [], "per_cpu_s": [], "cpu_s": []} for name in TOOLS}
    try:
        wait_port(port, "bench_load")
        for fn in TOOLS.values():  # warm up the target and the page cache
            fn(url, 1, args.connections)
        for r in range(args.rounds):
            for name, fn in TOOLS.items():
                requests, cpu = fn(url, args.seconds, args.connections)
                results[name]["rps"].append(requests / args.seconds)
                results[name]["cpu_s"].append(cpu)
                results[name]["per_cpu_s"].append(requests / max(cpu, 1e-9))
            if args.output == "text":
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        nginx.send_signal(signal.SIGTERM)
        try:
            nginx.wait(5)
        except subprocess.TimeoutExpired:
            nginx.kill()
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(results["wrk"]["per_cpu_s"])
    rows = []
    for name, r in results.items():
        per = statistics.median(r["per_cpu_s"])
        rows.append({
            "generator": name,
            "requests_per_s": round(statistics.median(r["rps"])),
            "requests_per_cpu_s": round(per),
            "cpu_us_per_request": round(1e6 / per, 2),
            "vs_wrk": round(per / base, 2),
            "rounds_requests_per_cpu_s": [round(x) for x in r["per_cpu_s"]],
        })
    if args.output == "json":
        print(json.dumps({"rounds": args.rounds, "seconds": args.seconds, "connections": args.connections, "results": rows}, indent=2))
        return
    print(f"\nload generators, closed loop, 1 thread, {args.connections} connections, median of {args.rounds} x {args.seconds}s")
    print("(target: nginx on CPU 0; generator on CPU 1; target >= 1.0x wrk in requests per CPU-second)")
    print(f"{'generator':<16}{'req/s':>10}{'req/CPU-s':>12}{'CPU us/req':>12}{'vs wrk':>9}   rounds (req/CPU-s)")
    for r in rows:
        rounds = " ".join(str(x) for x in r["rounds_requests_per_cpu_s"])
        print(f"{r['generator']:<16}{r['requests_per_s']:>10}{r['requests_per_cpu_s']:>12}{r['cpu_us_per_request']:>12.2f}{r['vs_wrk']:>8.2f}x   {rounds}")


if __name__ == "__main__":
    main()
