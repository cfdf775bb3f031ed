"""Relay throughput against Postfix's smtp-sink, measured in one run.

Runs Postfix's `smtp-source` (a) straight at `smtp-sink` and (b) at optin-relay, whose upstream
is that same `smtp-sink`, and prints messages per second of both and their ratio. The relay
figure counts a message once the relay has accepted it (durable spool commit, then 250); the
end-to-end figure once the relay has also delivered every message to the sink.

Needs smtp-source and smtp-sink (Debian package `postfix`; no Postfix daemon has to run).

    .venv/bin/python bench/smtp_throughput.py [--messages 2000] [--sessions 10] [--size 4096]
        [--storage sqlite|postgresql://...] [--tree PATH]

`--tree` runs the relay from another checkout of optin-relay (same virtualenv), so that two
revisions can be measured in one run: `git worktree add /tmp/before REV`, then alternate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchlib import (
    cpu_seconds,
    free_port,
    relay_config,
    sink_command,
    start_relay,
    stop,
    wait_port,
)


def source(port: int, args: argparse.Namespace) -> float:
    """Run smtp-source; return the seconds it took."""
    started = time.monotonic()
    subprocess.run(
        [
            "smtp-source",
            "-s",
            str(args.sessions),
            "-m",
            str(args.messages),
            "-l",
            str(args.size),
            "-f",
            "news@bench.example",
            "-t",
            "reader@example.net",
            f"127.0.0.1:{port}",
        ],
        check=True,
    )
    return time.monotonic() - started


def delivered(web_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('optin_relay_deliveries_total{outcome="delivered"}'):
                return float(line.split()[-1])
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes")
    parser.add_argument("--storage", default="sqlite", help="sqlite, or a postgresql:// URL")
    parser.add_argument("--tree", type=Path, default=None, help="run the relay from this checkout")
    args = parser.parse_args()
    for tool in ("smtp-source", "smtp-sink"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install postfix (no daemon needed)")

    work = Path(tempfile.mkdtemp(prefix="optin-relay-bench-"))
    sink_port, relay_port, web_port = free_port(), free_port(), free_port()
    sink = subprocess.Popen(sink_command(sink_port))
    relay = None
    try:
        wait_port(sink_port)
        direct = source(sink_port, args)

        storage = None if args.storage == "sqlite" else args.storage
        listener = {"address": f"127.0.0.1:{relay_port}", "tls": "none", "trusted_account": "bench"}
        path = relay_config(
            work, listener=listener, sink_port=sink_port, web_port=web_port, storage=storage
        )
        relay = start_relay(path, args.tree)
        try:
            wait_port(relay_port)
        except SystemExit:
            raise SystemExit((work / "relay.log").read_text()[-2000:]) from None
        wait_port(web_port)
        idle_cpu = cpu_seconds(relay.pid)
        started = time.monotonic()
        accept = source(relay_port, args)
        while delivered(web_port) < args.messages:
            if time.monotonic() - started > 600:
                raise SystemExit("the relay did not deliver everything within 10 minutes")
            time.sleep(0.05)
        end_to_end = time.monotonic() - started
        relay_cpu = cpu_seconds(relay.pid) - idle_cpu
    finally:
        stop(relay, sink)

    n = args.messages
    result = {
        "messages": n,
        "sessions": args.sessions,
        "size": args.size,
        "storage": args.storage.split("://")[0],
        "direct_msgs_per_s": round(n / direct, 1),
        "relay_accept_msgs_per_s": round(n / accept, 1),
        "relay_end_to_end_msgs_per_s": round(n / end_to_end, 1),
    }
    result["relay_cpu_ms_per_msg"] = round(1000 * relay_cpu / n, 2)
    result["ratio_accept"] = round(
        result["relay_accept_msgs_per_s"] / result["direct_msgs_per_s"], 4
    )
    result["ratio_end_to_end"] = round(
        result["relay_end_to_end_msgs_per_s"] / result["direct_msgs_per_s"], 4
    )
    print(f"smtp-source -> smtp-sink            {result['direct_msgs_per_s']:>10} msg/s")
    print(f"smtp-source -> optin-relay (250)    {result['relay_accept_msgs_per_s']:>10} msg/s")
    print(f"smtp-source -> optin-relay -> sink  {result['relay_end_to_end_msgs_per_s']:>10} msg/s")
    print(f"relay CPU per message (accept+out)  {result['relay_cpu_ms_per_msg']:>10} ms")
    print(f"ratio relay/direct (accept)         {result['ratio_accept']:>10}")
    print(f"ratio relay/direct (end to end)     {result['ratio_end_to_end']:>10}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
