"""What the bench scripts share: where things are, local ports, process CPU time, nginx
configurations and wrk runs."""

import os
import re
import socket
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHWORK = os.path.join(ROOT, "target/release/meshwork")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, who, timeout=15):
    """Waits until something listens on 127.0.0.1:port; exits naming `who` if nothing does."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{who}: nothing listens on 127.0.0.1:{port}")


def cpu_ticks(pids):
    """User + system CPU of `pids` in clock ticks, from /proc/<pid>/stat."""
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


def nginx_conf(directory, name, body):
    path = os.path.join(directory, f"{name}.conf")
    with open(path, "w") as f:
        f.write(
            f"worker_processes 1; daemon off; pid {directory}/{name}.pid; error_log {directory}/{name}.err warn;\n"
            "events { worker_connections 4096; }\n"
            f"http {{ access_log off; {body} }}\n"
        )
    return path


def run_wrk(url, seconds, connections, script=None, headers=()):
    """wrk on CPU 0, closed loop; returns the requests it completed (exits on error answers)."""
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    if script:
        cmd += ["-s", script]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"bench: {errors.group(1)} error responses from {url}:\n{out}")
    return requests
