"""What the bench scripts share: where things are, and local ports."""

import os
import socket
import sys
import time

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
