"""Helpers shared by the benchmarks (run as scripts: this folder is on sys.path)."""

from __future__ import annotations

import os
import socket
import time


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def sink_command(port: int, backlog: int = 256) -> list[str]:
    """Postfix's smtp-sink on 127.0.0.1:`port` (as root it needs a user to switch to)."""
    command = ["smtp-sink", f"127.0.0.1:{port}", str(backlog)]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]
    return command
