"""`optin-relay explain` latency as the journal grows from 1,000 to 10,000,000 rows, in one run.

One store; the journal is filled in steps with messages as the relay journals them (a MAIL,
a RCPT, a DATA entry with a header block of about 600 bytes, a render entry: four rows each).
After each step, `--lookups` messages picked at random are explained (everything `explain`
reads: the journal, the events, the queue's audit trail, the message's spool row), then as many
`explain --recipient` lookups. Prints p50 and p99 of each at each size, and the ratio of the
largest size's p99 to the smallest's: flat means about 1.

    .venv/bin/python bench/explain_scale.py [--sizes 1000,1000000,10000000] [--lookups 300]
        [--storage sqlite|postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Storage, percentile

from relay.cli.explain import story
from relay.storage import open_store
from relay.storage.records import JournalEntry

HEADERS = (
    "Received: from crm.example (crm.example [192.0.2.10]) by relay.example (optin-relay)"
    " with ESMTPSA id {id}; Mon, 30 Nov 2026 12:00:00 +0000\r\n"
    "From: Acme News <news@acme.example>\r\nTo: reader{n}@example.net\r\n"
    "Subject: Our November news, with a subject line of ordinary length\r\n"
    "Date: Mon, 30 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{id}@acme.example>\r\n"
    'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b1_{id}"\r\n'
    "List-Id: Acme News <news.acme.example>\r\nX-Mailer: Acme CRM 7.2"
)


def message_entries(n: int, at: float) -> list[JournalEntry]:
    """The four entries the relay journals for one accepted, delivered message."""
    mid = f"{n:021X}"
    rcpt = f"reader{n}@example.net"
    mail = {
        "mail_from": "news@acme.example",
        "client_ip": "192.0.2.10",
        "listener": "0.0.0.0:587",
        "tls": True,
        "auth": "acme-crm",
        "helo": "crm.example",
        "verdict": "accept",
    }
    data = {
        "size": 24_000,
        "recipients": 1,
        "campaign": f"fp:{n % 1000:032x}",
        "headers": HEADERS.format(id=mid, n=n),
        "verdict": "accept",
    }
    render = {
        "attempt": 1,
        "status": "delivered",
        "unsubscribe": {"token_id": f"{n:016x}", "mailto": True, "footer": "added"},
        "trace": {"token_id": f"{n + 1:016x}", "mail_from": f"bounce+{n:029x}@relay.example"},
        "dkim": {"removed": 0, "signed": "acme.example"},
    }
    return [
        JournalEntry(mid, at, "mail", "acme", mail),
        JournalEntry(mid, at, "rcpt", "acme", {"n": 1, "verdict": "accept"}, rcpt),
        JournalEntry(mid, at, "data", "acme", data),
        JournalEntry(mid, at + 1, "render", "acme", render, rcpt),
    ]


async def grow(url: str, start: int, end: int) -> float:
    """Journal messages start..end-1 (four rows each); the seconds it took."""
    store = open_store(url)
    await store.open()
    try:
        await store.migrate()
        began = time.monotonic()
        batch = 10_000
        for first in range(start, end, batch):
            entries = [
                e
                for n in range(first, min(first + batch, end))
                for e in message_entries(n, 1_800_000_000.0 + n)
            ]
            await store.record_journal(entries)
        return time.monotonic() - began
    finally:
        await store.close()


async def lookups(url: str, messages: int, count: int, rng: random.Random) -> dict[str, float]:
    """p50/p99 milliseconds of `explain ID` and of `explain --recipient` at this size."""
    store = open_store(url)
    await store.open()
    try:
        picks = [rng.randrange(messages) for _ in range(count)]
        for n in picks[:20]:  # warm the caches a little, as a relay that has been running
            await story(f"{n:021X}", store)
        by_id, by_recipient = [], []
        for n in picks:
            began = time.perf_counter()
            found = await story(f"{n:021X}", store)
            by_id.append(1000 * (time.perf_counter() - began))
            assert len(found["timeline"]) == 4, found  # noqa: S101 - a benchmark's check
            began = time.perf_counter()
            ids = await store.journal_messages(f"reader{n}@example.net", since=0.0, limit=20)
            by_recipient.append(1000 * (time.perf_counter() - began))
            assert ids == [f"{n:021X}"]  # noqa: S101
    finally:
        await store.close()
    return {
        "explain_p50_ms": round(percentile(by_id, 0.5), 3),
        "explain_p99_ms": round(percentile(by_id, 0.99), 3),
        "recipient_p50_ms": round(percentile(by_recipient, 0.5), 3),
        "recipient_p99_ms": round(percentile(by_recipient, 0.99), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,1000000,10000000", help="journal rows")
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--storage", default="sqlite", help="sqlite, or a postgresql:// URL")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="optin-relay-explain-"))
    storage = Storage(work, args.storage)
    url = storage.fresh()
    rng = random.Random(7)
    steps = []
    try:
        done = 0
        for size in sizes:
            messages = size // 4
            filled = asyncio.run(grow(url, done, messages))
            done = messages
            step = {"journal_rows": messages * 4, "fill_s": round(filled, 1)}
            step |= asyncio.run(lookups(url, messages, args.lookups, rng))
            steps.append(step)
            print(
                f"{step['journal_rows']:>10,} rows: explain p50 {step['explain_p50_ms']} ms,"
                f" p99 {step['explain_p99_ms']} ms; --recipient p50"
                f" {step['recipient_p50_ms']} ms, p99 {step['recipient_p99_ms']} ms"
                f" (filled in {step['fill_s']} s)",
                file=sys.stderr,
            )
    finally:
        storage.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "storage": storage.kind,
        "steps": steps,
        "explain_p99_ratio": round(steps[-1]["explain_p99_ms"] / steps[0]["explain_p99_ms"], 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
