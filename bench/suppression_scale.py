"""RCPT latency as the suppression list grows from 1,000 to 10,000,000 addresses, in one run.

One store and one relay (full policy: suppression, consent enforced, rate limits); the list is
filled in steps, and after each step (its writes synced to disk, 200 RCPTs to warm up) one SMTP
session issues `--rcpts` RCPT commands, half for
suppressed addresses (550) and half for subscribers with an opt-in record (250). Prints the p50
and p99 latency of one RCPT at each size, and the ratio of the largest size's p99 to the
smallest's: flat means about 1.

    .venv/bin/python bench/suppression_scale.py [--sizes 1000,100000,1000000,10000000]
        [--rcpts 4000] [--storage sqlite|postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
from benchlib import (
    READERS,
    Storage,
    free_port,
    percentile,
    relay_config,
    sink_command,
    start_relay,
    stop,
    wait_port,
)

from relay.storage import open_store
from relay.storage.records import Consent, Suppression


async def grow(url: str, start: int, end: int) -> float:
    """Suppress gone{start}..gone{end-1}@example.org; return the seconds it took."""
    store = open_store(url)
    await store.open()
    try:
        await store.migrate()
        if start == 0:
            await store.record_consents(
                [
                    Consent("bench", a, "news", "imported", 0.0, None, "bench", evidence="x")
                    for a in READERS
                ]
            )
        began = time.monotonic()
        batch = 50_000
        for first in range(start, end, batch):
            await store.suppress_many(
                [
                    Suppression(f"gone{n}@example.org", "bench", "import", "bench", 0.0)
                    for n in range(first, min(first + batch, end))
                ]
            )
        return time.monotonic() - began
    finally:
        await store.close()


async def rcpt_latencies(port: int, size: int, count: int, rng: random.Random) -> list[float]:
    """Time `count` RCPT commands, alternating suppressed addresses and subscribers."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
    await client.connect()
    await client.mail("news@bench.example")
    latencies = []
    for n in range(count):
        if n and n % 500 == 0:  # stay under smtp.max_recipients
            await client.rset()
            await client.mail("news@bench.example")
        address = f"gone{rng.randrange(size)}@example.org" if n % 2 else rng.choice(READERS)
        began = time.monotonic()
        response = await client.execute_command(f"RCPT TO:<{address}>".encode())
        latencies.append(time.monotonic() - began)
        expected = 550 if n % 2 else 250
        if response.code != expected:
            raise SystemExit(f"RCPT {address}: {response.code} {response.message}")
    await client.quit()
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000,10000000")
    parser.add_argument("--rcpts", type=int, default=4000)
    parser.add_argument("--storage", default="sqlite", help="sqlite, or a postgresql:// URL")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="optin-relay-bench-"))
    storage = Storage(work, args.storage)
    url = storage.fresh()
    sink_port, relay_port = free_port(), free_port()
    sink = subprocess.Popen(sink_command(sink_port))
    relay = None
    rows = []
    rng = random.Random(12)  # which addresses to ask for, not secrecy
    try:
        wait_port(sink_port)
        asyncio.run(grow(url, 0, 0))
        path = relay_config(
            work,
            listener={
                "address": f"127.0.0.1:{relay_port}",
                "tls": "none",
                "trusted_account": "bench",
            },
            sink_port=sink_port,
            web_port=free_port(),
            storage=url,
            full_policy=True,
        )
        relay = start_relay(path)
        wait_port(relay_port)
        filled = 0
        for size in sizes:
            took = asyncio.run(grow(url, filled, size))
            rate = (size - filled) / took if took else 0.0
            filled = size
            os.sync()  # the import's writes reach the disk before the lookups are timed
            time.sleep(1)
            asyncio.run(rcpt_latencies(relay_port, size, 200, rng))  # warm-up, not timed
            latencies = asyncio.run(rcpt_latencies(relay_port, size, args.rcpts, rng))
            rows.append(
                {
                    "suppressed": size,
                    "import_rows_per_s": round(rate),
                    "rcpt_p50_ms": round(1000 * percentile(latencies, 0.50), 3),
                    "rcpt_p99_ms": round(1000 * percentile(latencies, 0.99), 3),
                }
            )
            row = rows[-1]
            print(
                f"{size:>12,} suppressed   RCPT p50 {row['rcpt_p50_ms']:>7} ms"
                f"   p99 {row['rcpt_p99_ms']:>7} ms   (import {row['import_rows_per_s']:,}/s)"
            )
    finally:
        stop(relay, sink)
        storage.cleanup()
    result = {
        "storage": storage.kind,
        "rcpts_per_size": args.rcpts,
        "sizes": rows,
        "p99_largest_over_smallest": round(rows[-1]["rcpt_p99_ms"] / rows[0]["rcpt_p99_ms"], 2),
    }
    print(f"p99 at {sizes[-1]:,} / p99 at {sizes[0]:,}: {result['p99_largest_over_smallest']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
