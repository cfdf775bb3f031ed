"""RCPT checks per second through the relay's SMTP listener with 1,000,000 suppressed addresses.

Fills a fresh store with suppressions and opt-in records, starts the relay (`python -m relay
serve`) with consent enforced and rate limits set (so every RCPT runs the suppression, consent
and rate-limit checks), and has several SMTP sessions issue RCPT commands, half of them for
suppressed addresses. The same run is made against empty lists; both rates and their ratio are
printed, with the import rates of suppressions and opt-in records.

    .venv/bin/python bench/rcpt_checks.py [--suppressed 1000000] [--rcpts 20000]
        [--sessions 8] [--storage sqlite|postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
import yaml
from benchlib import free_port, wait_port

from relay.passwords import hash_password
from relay.storage import open_store
from relay.storage.records import Consent, Suppression


async def fill(url: str, count: int, consents: list[str]) -> tuple[float, float]:
    """Suppress `count` addresses and record opt-in for `consents`; return both durations."""
    store = open_store(url)
    await store.open()
    await store.migrate()
    started = time.monotonic()
    batch = 20_000
    for first in range(0, count, batch):
        await store.suppress_many(
            [
                Suppression(f"user{n}@example.net", "bench", "import", "bench", 0.0)
                for n in range(first, min(first + batch, count))
            ]
        )
    suppressed_in = time.monotonic() - started
    started = time.monotonic()
    for first in range(0, len(consents), batch):
        await store.record_consents(
            [
                Consent("bench", address, "news", "imported", 0.0, None, "bench", evidence="bench")
                for address in consents[first : first + batch]
            ]
        )
    consented_in = time.monotonic() - started
    await store.close()
    return suppressed_in, consented_in


def fresh(index: int, n: int) -> str:
    """A never-suppressed address with an opt-in record."""
    return f"fresh{index}-{n}@example.org"


async def rcpt_rate(url: str, args: argparse.Namespace, work: Path) -> float:
    port = free_port()
    config = {
        "hostname": "relay.bench.example",
        "smtp": {
            "listeners": [
                {"address": f"127.0.0.1:{port}", "tls": "none", "trusted_account": "bench"}
            ],
            "max_recipients": 100_000,
            "max_connections_per_ip": 1000,
        },
        "upstream": {"host": "127.0.0.1", "port": free_port(), "tls": "none"},
        "storage": {"url": url},
        "web": {"listen": f"127.0.0.1:{free_port()}", "public_url": "https://relay.bench.example"},
        "tokens": {"keys": [secrets.token_hex(32)]},
        "log_level": "warning",
        "accounts": [
            {
                "id": "bench",
                "username": "bench",
                "password_hash": hash_password("bench-password"),
                "from_domains": ["bench.example"],
                "brand": {"name": "Bench", "postal_address": "1 Bench Street"},
                "consent": "enforce",
                "limits": {
                    "recipients_per_hour": 100_000_000,
                    "per_domain_per_hour": 100_000_000,
                    "recipients_per_message": 100_000,
                    "suppression_violations": 100_000_000,
                },
            }
        ],
    }
    path = work / f"relay-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (work / f"relay-{port}.log").open("w")
    relay = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(path)], stdout=log, stderr=log
    )
    try:
        await asyncio.to_thread(wait_port, port)
        per_session = args.rcpts // args.sessions

        async def session(index: int) -> int:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
            await client.connect()
            await client.mail("news@bench.example")
            refused = 0
            for n in range(per_session):
                # Half suppressed (when the list is full), half never suppressed.
                who = f"user{(index * per_session + n) * 7 % max(args.suppressed, 1)}@example.net"
                if n % 2:
                    who = fresh(index, n)
                response = await client.execute_command(f"RCPT TO:<{who}>".encode())
                refused += response.code == 550
            await client.quit()
            return refused

        started = time.monotonic()
        await asyncio.gather(*(session(i) for i in range(args.sessions)))
        return per_session * args.sessions / (time.monotonic() - started)
    finally:
        relay.terminate()
        relay.wait(timeout=60)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suppressed", type=int, default=1_000_000)
    parser.add_argument("--rcpts", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--storage", default="sqlite")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="optin-relay-rcpt-"))

    def url(name: str) -> str:
        if args.storage == "sqlite":
            return f"sqlite:///{work}/{name}.db"
        separator = "&" if "?" in args.storage else "?"
        return f"{args.storage}{separator}schema=bench_{name}_{secrets.token_hex(4)}"

    full, empty = url("full"), url("empty")
    per_session = args.rcpts // args.sessions
    consents = [fresh(i, n) for i in range(args.sessions) for n in range(1, per_session, 2)]
    filled_in, consented_in = await fill(full, args.suppressed, consents)
    await fill(empty, 0, consents)
    with_list = await rcpt_rate(full, args, work)
    without = await rcpt_rate(empty, args, work)
    result = {
        "storage": args.storage.split("://")[0],
        "suppressed": args.suppressed,
        "suppression_import_rows_per_s": round(args.suppressed / filled_in),
        "consent_import_rows_per_s": round(len(consents) / consented_in),
        "rcpt_per_s_with_list": round(with_list),
        "rcpt_per_s_empty_list": round(without),
        "ratio": round(with_list / without, 3),
    }
    print(f"suppressed addresses             {args.suppressed:>10}")
    print(f"suppression import               {result['suppression_import_rows_per_s']:>10} rows/s")
    print(f"opt-in record import (store)     {result['consent_import_rows_per_s']:>10} rows/s")
    print(f"RCPT checks, 1M suppressed       {result['rcpt_per_s_with_list']:>10} /s")
    print(f"RCPT checks, empty list          {result['rcpt_per_s_empty_list']:>10} /s")
    print(f"ratio                            {result['ratio']:>10}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
