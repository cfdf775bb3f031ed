"""A CRM that opens a new session for every message: STARTTLS, AUTH, one message, QUIT.

Many CRMs do this. A bounded Python client (aiosmtplib) runs `--concurrency` such sessions at a
time against optin-relay, whose upstream is Postfix's smtp-sink, and the relay's CPU per
session (from /proc) and the sessions per second are printed. `--tree` runs the relay from
another checkout (same virtualenv), so two revisions are measured in one run.

    .venv/bin/python bench/auth_sessions.py [--sessions 300] [--concurrency 8] [--tree PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
from benchlib import (
    cpu_seconds,
    free_port,
    relay_config,
    sink_command,
    start_relay,
    stop,
    wait_port,
)

from relay.tlsutil import write_self_signed

PASSWORD = "bench-password"  # noqa: S105 - a benchmark's throwaway account
MESSAGE = (
    "From: news@bench.example\r\nTo: reader@example.net\r\nSubject: Bench\r\n\r\n"
    + "A line of a newsletter, long enough to look like one.\r\n" * 60
)


async def one_session(port: int) -> None:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, start_tls=True, validate_certs=False, timeout=60
    )
    await client.connect()
    await client.login("bench", PASSWORD)
    await client.sendmail("news@bench.example", ["reader@example.net"], MESSAGE)
    await client.quit()


async def run_sessions(port: int, sessions: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def bounded() -> None:
        async with gate:
            await one_session(port)

    started = time.monotonic()
    await asyncio.gather(*(bounded() for _ in range(sessions)))
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tree", type=Path, default=None, help="run the relay from this checkout")
    args = parser.parse_args()
    if shutil.which("smtp-sink") is None:
        raise SystemExit("smtp-sink not found: apt-get install postfix (no daemon needed)")
    work = Path(tempfile.mkdtemp(prefix="optin-relay-bench-"))
    sink_port, relay_port, web_port = free_port(), free_port(), free_port()
    sink = subprocess.Popen(sink_command(sink_port))
    relay = None
    try:
        wait_port(sink_port)
        cert, key = work / "cert.pem", work / "key.pem"
        write_self_signed(cert, key, ["relay.bench.example", "localhost"])
        path = relay_config(
            work,
            listener={"address": f"127.0.0.1:{relay_port}", "tls": "starttls"},
            sink_port=sink_port,
            web_port=web_port,
            password=PASSWORD,
            tls={"certificate": str(cert), "private_key": str(key)},
            auth_failure_limit=1000,
        )
        relay = start_relay(path, args.tree)
        wait_port(relay_port)
        wait_port(web_port)
        idle = cpu_seconds(relay.pid)
        elapsed = asyncio.run(run_sessions(relay_port, args.sessions, args.concurrency))
        used = cpu_seconds(relay.pid) - idle
    finally:
        stop(relay, sink)
    result = {
        "sessions": args.sessions,
        "concurrency": args.concurrency,
        "sessions_per_s": round(args.sessions / elapsed, 1),
        "relay_cpu_ms_per_session": round(1000 * used / args.sessions, 2),
    }
    print(f"sessions (STARTTLS, AUTH, 1 message) per second  {result['sessions_per_s']:>8}")
    cpu = result["relay_cpu_ms_per_session"]
    print(f"relay CPU per session                            {cpu:>8} ms")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
