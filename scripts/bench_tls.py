#!/usr/bin/env python3
"""TLS and gRPC costs, measured against nginx in the same run:

1. a TLS-terminating hop (TLS 1.3, ECDSA P-256, keep-alive): meshwork vs nginx, CPU per request;
2. new TLS handshakes: every request on a new connection (`Connection: close`), handshakes per
   CPU-second of the proxy, meshwork vs nginx;
3. a unary gRPC callout per request from a filter (global-rate-limit in gRPC mode against
   `meshwork ratelimit-service`): the proxy's added CPU per request over a plain hop.

The proxy under test is pinned to CPU 1, wrk and the upstreams to CPU 0; scenarios are
interleaved over rounds and medians reported. Usage: scripts/bench_tls.py [--rounds 3] [--seconds 5]
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


def certificate(work):
    key, cert = os.path.join(work, "server.key"), os.path.join(work, "server.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=bench.test", "-addext",
         "subjectAltName=DNS:bench.test"],
        check=True, capture_output=True)
    return cert, key


class Scenario:
    def __init__(self, name, url, pids, headers=()):
        self.name, self.url, self.pids, self.headers = name, url, pids, headers
        self.cpu_us = []

    def measure(self, seconds, connections):
        before = cpu_ticks(self.pids)
        n = run_wrk(self.url, seconds, connections, headers=self.headers)
        self.cpu_us.append((cpu_ticks(self.pids) - before) / TICK * 1e6 / n)

    def median(self):
        return statistics.median(self.cpu_us)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--output", choices=["text", "json"], default="text")
    args = ap.parse_args()
    for tool in ["nginx", "wrk", "taskset", "openssl"]:
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is missing (run make setup)")
    work = tempfile.mkdtemp(prefix="meshwork-bench-tls-")
    procs = []

    def start(cmd, cpu):
        p = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(work, "stderr.log"), "a"))
        procs.append(p)
        return p

    try:
        cert, key = certificate(work)
        up = free_port()
        start(["nginx", "-p", work, "-c", nginx_conf(work, "upstream", f'server {{ listen 127.0.0.1:{up}; keepalive_requests 1000000; location / {{ return 200 "hello from upstream\\n"; }} }}')], 0)
        wait_port(up, "bench")
        hop = free_port()
        nginx = start(["nginx", "-p", work, "-c", nginx_conf(work, "tls", (
            f"upstream app {{ server 127.0.0.1:{up}; keepalive 64; keepalive_requests 1000000; }} "
            f"server {{ listen 127.0.0.1:{hop} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; "
            "ssl_protocols TLSv1.3; ssl_session_cache off; ssl_session_tickets off; keepalive_requests 1000000; "
            "location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"))], 1)
        wait_port(hop, "bench")
        nginx_pids = [nginx.pid] + children(nginx.pid)

        rls_port = free_port()
        limits = os.path.join(work, "limits.yaml")
        with open(limits, "w") as f:
            f.write("domain: bench\ndescriptors:\n  - key: generic_key\n    value: all\n    rate_limit: {unit: second, requests_per_unit: 1000000000}\n")
        start([MESHWORK, "ratelimit-service", "--listen", f"127.0.0.1:{rls_port}", "--config", limits, "--threads", "1"], 0)
        wait_port(rls_port, "bench")

        tls_port, plain_port, grpc_port, json_port = free_port(), free_port(), free_port(), free_port()
        grl = json.dumps({"domain": "bench", "rate_limit_service": {"cluster": "rls", "protocol": "grpc"},
                          "timeout": "1s", "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "all"}}]}],
                          "enable_x_ratelimit_headers": "OFF"})
        grl_json = json.dumps({**json.loads(grl), "rate_limit_service": {"cluster": "rls-json"}})
        config = os.path.join(work, "meshwork.yaml")
        with open(config, "w") as f:
            f.write(f"workers: 1\ncache_dir: {work}/cache\n")
            f.write(f"clusters: [{{name: app, endpoints: [\"127.0.0.1:{up}\"]}}, {{name: rls, endpoints: [\"127.0.0.1:{rls_port}\"], http2: true}}, {{name: rls-json, endpoints: [\"127.0.0.1:{rls_port}\"]}}]\n")
            f.write("listeners:\n")
            f.write(f"  - {{name: tls, listen: 127.0.0.1:{tls_port}, listener: {{tls: {{certificates: [{{cert: {cert}, key: {key}}}], min_version: TLSv1_3, alpn: [http/1.1]}}}}, route: {{cluster: app}}}}\n")
            f.write(f"  - {{name: plain, listen: 127.0.0.1:{plain_port}, route: {{cluster: app}}}}\n")
            f.write(f"  - {{name: grpc-callout, listen: 127.0.0.1:{grpc_port}, route: {{cluster: app}}, filters: [{{name: grl, module: {ROOT}/target/filters/global-rate-limit.wasm, configuration: {grl}}}]}}\n")
            f.write(f"  - {{name: json-callout, listen: 127.0.0.1:{json_port}, route: {{cluster: app}}, filters: [{{name: grl-json, module: {ROOT}/target/filters/global-rate-limit.wasm, configuration: {grl_json}}}]}}\n")
        mesh = start([MESHWORK, "run", "--config", config], 1)
        for p in [tls_port, plain_port, grpc_port, json_port]:
            wait_port(p, "bench")

        close = ["Connection: close"]
        keepalive = [Scenario("nginx TLS hop", f"https://127.0.0.1:{hop}/", nginx_pids),
                     Scenario("meshwork TLS hop", f"https://127.0.0.1:{tls_port}/", [mesh.pid])]
        handshakes = [Scenario("nginx TLS handshakes", f"https://127.0.0.1:{hop}/", nginx_pids, close),
                      Scenario("meshwork TLS handshakes", f"https://127.0.0.1:{tls_port}/", [mesh.pid], close)]
        callout = [Scenario("meshwork hop", f"http://127.0.0.1:{plain_port}/", [mesh.pid]),
                   Scenario("meshwork hop + gRPC callout", f"http://127.0.0.1:{grpc_port}/", [mesh.pid]),
                   Scenario("meshwork hop + HTTP/1.1 JSON callout", f"http://127.0.0.1:{json_port}/", [mesh.pid])]
        everything = keepalive + handshakes + callout
        for s in everything:
            run_wrk(s.url, 1, args.connections, headers=s.headers)
        for r in range(args.rounds):
            for s in everything:
                s.measure(args.seconds, args.connections)
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

    results = {
        "tls_hop_cpu_us": {s.name: round(s.median(), 2) for s in keepalive},
        "tls_hop_vs_nginx": round(keepalive[1].median() / keepalive[0].median(), 2),
        "handshakes_per_cpu_second": {s.name: round(1e6 / s.median()) for s in handshakes},
        "handshakes_vs_nginx": round(handshakes[0].median() / handshakes[1].median(), 2),
        "grpc_callout_added_cpu_us": round(callout[1].median() - callout[0].median(), 2),
        "json_callout_added_cpu_us": round(callout[2].median() - callout[0].median(), 2),
    }
    if args.output == "json":
        print(json.dumps(results, indent=2))
        return
    print(f"\nTLS 1.3 (ECDSA P-256), wrk -c{args.connections}, median of {args.rounds} x {args.seconds}s (proxy pinned to CPU 1):")
    for s in keepalive:
        print(f"  {s.name:<34}{s.median():>8.2f} us CPU/request")
    print(f"  meshwork / nginx: {results['tls_hop_vs_nginx']:.2f}x (target <= 1.0x)")
    for s in handshakes:
        print(f"  {s.name:<34}{1e6 / s.median():>8.0f} handshakes/CPU-second")
    print(f"  meshwork / nginx: {results['handshakes_vs_nginx']:.2f}x (target >= 1.0x)")
    for s in callout:
        print(f"  {s.name:<34}{s.median():>8.2f} us CPU/request")
    print(f"  a unary gRPC callout per request adds {results['grpc_callout_added_cpu_us']:.2f} us of proxy CPU (target <= 25 us);")
    print(f"  the same filter's HTTP/1.1 JSON callout adds {results['json_callout_added_cpu_us']:.2f} us")


if __name__ == "__main__":
    main()
