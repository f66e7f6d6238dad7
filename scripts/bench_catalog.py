#!/usr/bin/env python3
"""The catalog's speed, measured in this run: `catalog build` + `site` for every item, `publish`
of every item to a local registry (Debian's docker-registry, fresh storage each round), and
`meshwork run` starting with three cached oci:// filters next to the same three as local files.

Targets (issue: the catalog): build + site < 10 s, publish < 30 s, start with three cached
oci:// filters < 300 ms. Medians of several rounds; the machine is shared, so read ratios."""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/meshwork")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def timed(args, **kw):
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, cwd=ROOT, **kw)
    return time.perf_counter() - start


def registry(work):
    port = free_port()
    config = os.path.join(work, f"registry-{port}.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {work}/data-{port}}}}}\n"
                f"http: {{addr: 127.0.0.1:{port}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("docker-registry did not start")


def start_time(config):
    """Seconds from exec to the proxy's first line (it listens then)."""
    start = time.perf_counter()
    proc = subprocess.Popen([BIN, "run", "--config", config], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    took = time.perf_counter() - start
    proc.kill()
    proc.wait()
    if "listening on" not in line:
        sys.exit(f"meshwork did not start: {line!r}")
    return took


def main():
    work = tempfile.mkdtemp(prefix="bench-catalog-")
    build = [timed([BIN, "catalog", "build", "--out", f"{work}/build"]) +
             timed([BIN, "catalog", "site", "--out", f"{work}/site", "--index", f"{work}/build/index.json",
                    "--playground", os.path.join(ROOT, "target/playground")])
             for _ in range(5)]
    print(f"   build + site, 24 items:            median {statistics.median(build) * 1000:7.0f} ms  (target < 10000 ms)")

    rounds = []
    for i in range(3):
        proc, host = registry(work)
        try:
            rounds.append(timed([BIN, "catalog", "publish", "--registry", f"{host}/meshwork", "--record", f"{work}/rec-{i}.json"]))
        finally:
            proc.kill()
            proc.wait()
    print(f"   publish every item (34 artifacts): median {statistics.median(rounds) * 1000:7.0f} ms  (target < 30000 ms)")

    proc, host = registry(work)
    try:
        subprocess.run([BIN, "catalog", "publish", "--registry", f"{host}/meshwork", "--record", f"{work}/rec.json",
                        "filter/measure", "filter/local-rate-limit", "filter/retry"], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        app = f"127.0.0.1:{free_port()}"
        up = subprocess.Popen([BIN, "upstream", "--listen", app], stdout=subprocess.DEVNULL)
        names = ["measure", "local-rate-limit", "retry"]
        configs = {}
        for kind in ["oci", "file"]:
            lines = []
            for n in names:
                module = f"oci://{host}/meshwork/filters/{n}:0.1.0" if kind == "oci" else os.path.join(ROOT, f"target/filters/{n}.wasm")
                lines.append(f"  - {{name: {n}, module: {module}, configuration: {{rate: 100, burst: 100}}}}" if n == "local-rate-limit"
                             else f"  - {{name: {n}, module: {module}}}")
            path = f"{work}/{kind}.yaml"
            with open(path, "w") as f:
                f.write(f"listen: 127.0.0.1:0\ncache_dir: {work}/cache\nclusters: [{{name: app, endpoints: [\"{app}\"]}}]\n"
                        f"route: {{cluster: app}}\nfilters:\n" + "\n".join(lines) + "\n")
            configs[kind] = path
        start_time(configs["oci"])  # pulls into the cache (and compiles)
        start_time(configs["file"])
        times = {kind: statistics.median([start_time(path) for _ in range(10)]) for kind, path in configs.items()}
        up.kill()
    finally:
        proc.kill()
        proc.wait()
    print(f"   start, three cached oci:// filters: median {times['oci'] * 1000:7.1f} ms  (target < 300 ms)")
    print(f"   start, the same three as files:     median {times['file'] * 1000:7.1f} ms  "
          f"(oci:// costs {times['oci'] / times['file']:.2f}x)")


if __name__ == "__main__":
    main()
