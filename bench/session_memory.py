"""The relay's memory across many short TLS sessions: RSS after each thousand, in one run.

Each session connects, says STARTTLS, authenticates and quits (16 at a time, aiosmtplib), as a
CRM that opens a session per message does. RSS that levels off is the allocator's working set;
RSS that keeps rising would be a leak.

    .venv/bin/python bench/session_memory.py [--sessions 10000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
from benchlib import free_port, relay_config, rss_kib, sink_command, start_relay, stop, wait_port

from relay.tlsutil import write_self_signed

PASSWORD = "bench-password"  # noqa: S105 - a benchmark's throwaway account


async def sessions(port: int, count: int, concurrency: int) -> None:
    """`count` sessions of STARTTLS, AUTH and QUIT, `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            client = aiosmtplib.SMTP(
                hostname="127.0.0.1", port=port, start_tls=True, validate_certs=False, timeout=30
            )
            await client.connect()
            await client.login("bench", PASSWORD)
            await client.quit()

    await asyncio.gather(*(one() for _ in range(count)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="optin-relay-bench-"))
    cert, key = work / "cert.pem", work / "key.pem"
    write_self_signed(cert, key, ["relay.bench.example", "localhost"])
    sink_port, port = free_port(), free_port()
    sink = subprocess.Popen(sink_command(sink_port))
    relay = None
    points = []
    try:
        wait_port(sink_port)
        path = relay_config(
            work,
            listener={"address": f"127.0.0.1:{port}", "tls": "starttls"},
            sink_port=sink_port,
            web_port=free_port(),
            password=PASSWORD,
            tls={"certificate": str(cert), "private_key": str(key)},
            auth_failure_limit=1_000_000,
        )
        relay = start_relay(path)
        wait_port(port)
        time.sleep(1)
        points.append({"sessions": 0, "rss_mib": round(rss_kib(relay.pid) / 1024, 1)})
        done = 0
        while done < args.sessions:
            step = min(1000, args.sessions - done)
            asyncio.run(sessions(port, step, args.concurrency))
            done += step
            points.append({"sessions": done, "rss_mib": round(rss_kib(relay.pid) / 1024, 1)})
            print(f"after {done:>6} sessions   RSS {points[-1]['rss_mib']:>7} MiB")
    finally:
        stop(relay, sink)
    print(json.dumps({"concurrency": args.concurrency, "points": points}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
