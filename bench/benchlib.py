"""Helpers shared by the benchmarks (run as scripts: this folder is on sys.path)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def relay_config(
    work: Path,
    *,
    listener: dict[str, Any],
    sink_port: int,
    web_port: int,
    storage: str | None = None,
    password: str = "bench-password",  # noqa: S107 - a benchmark's throwaway account
    **smtp: Any,
) -> Path:
    """A relay configuration in `work`: account `bench` (DKIM for bench.example), sink upstream."""
    from relay.mail.signing import generate_key, write_key  # noqa: PLC0415 - after sys.path
    from relay.passwords import hash_password  # noqa: PLC0415

    key = work / "bench.example.pem"
    write_key(key, generate_key("rsa-sha256"))
    config = {
        "hostname": "relay.bench.example",
        "smtp": {"listeners": [listener], "max_connections_per_ip": 1000, **smtp},
        "upstream": {"host": "127.0.0.1", "port": sink_port, "tls": "none", "connections": 8},
        "delivery": {"poll_interval": 0.05, "batch": 200},
        "storage": {"url": storage or f"sqlite:///{work}/relay.db"},
        "web": {"listen": f"127.0.0.1:{web_port}", "public_url": "https://relay.bench.example"},
        "tokens": {"keys": ["bench-token-key-0123456789abcdef0123456789"]},
        "dkim": [{"domain": "bench.example", "selector": "bench", "private_key": str(key)}],
        "log_level": "warning",
        "accounts": [
            {
                "id": "bench",
                "username": "bench",
                "password_hash": hash_password(password),
                "from_domains": ["bench.example"],
                "brand": {"name": "Bench", "postal_address": "1 Bench Street"},
            }
        ],
    }
    path = work / "relay.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_relay(config: Path, tree: Path | None = None) -> subprocess.Popen[bytes]:
    """`optin-relay serve` on `config`, from this checkout or from `tree` (same virtualenv)."""
    where: dict[str, Any] = {}
    if tree is not None:  # `-m` puts the working folder first on the path: run from the tree
        where = {"cwd": tree, "env": {**os.environ, "PYTHONPATH": str(tree)}}
    log = (config.parent / "relay.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(config)],
        stdout=log,
        stderr=log,
        **where,
    )


def stop(*processes: subprocess.Popen[bytes] | None) -> None:
    """Stop the relay and the sink (SIGTERM, then wait: the relay drains gracefully)."""
    for process in processes:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
