"""Cost of the spool backlog query behind /metrics, against the plain join it replaced, in one run.

Fills a fresh store (migrated by the relay itself) with M messages of 10 recipients each, one
message in 20 still pending, runs ANALYZE, then times `BACKLOG_SQL` (count on the status index,
age from the lowest pending id) and the join of every pending recipient to its message. Prints
both and the ratio.

    .venv/bin/python bench/backlog_query.py [--messages 100000]
        [--storage sqlite|postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from relay.storage import open_store
from relay.storage.sql import BACKLOG_SQL

JOIN_SQL = (
    "SELECT COUNT(*), MIN(m.received_at) FROM recipients r"
    " JOIN messages m ON m.id = r.message_id WHERE r.status = 'pending'"
)
RUNS = 20


def rows(messages: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Messages and their recipients: one message in 20 still has its 10 recipients pending."""
    spooled = [
        (f"m{i}", "acme", "news@acme.example", "message", b"x", 1, 1e9 + i) for i in range(messages)
    ]
    recipients = [
        (f"m{i}", f"r{j}@example.net", "pending" if i % 20 == 0 else "delivered", 0.0, 0.0)
        for i in range(messages)
        for j in range(10)
    ]
    return spooled, recipients


def same(answers: list[tuple[Any, ...]]) -> None:
    """Both queries must give the same count and age, or the comparison means nothing."""
    if len(set(answers)) != 1:
        raise SystemExit(f"the queries disagree: {answers}")


async def sqlite_timings(messages: int) -> dict[str, float]:
    path = Path(tempfile.mkdtemp(prefix="optin-backlog-")) / "relay.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    await store.migrate()
    await store.close()
    db = sqlite3.connect(path)
    spooled, recipients = rows(messages)
    db.executemany(
        "INSERT INTO messages (id, account_id, mail_from, kind, content, size, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        spooled,
    )
    db.executemany(
        "INSERT INTO recipients (message_id, rcpt, status, next_attempt, updated_at)"
        " VALUES (?, ?, ?, ?, ?)",
        recipients,
    )
    db.commit()
    db.execute("ANALYZE")
    results, answers = {}, []
    for name, sql in (("backlog_sql", BACKLOG_SQL), ("join", JOIN_SQL)):
        answers.append(tuple(db.execute(sql).fetchone()))  # and warm the cache
        started = time.perf_counter()
        for _ in range(RUNS):
            db.execute(sql).fetchall()
        results[name] = (time.perf_counter() - started) / RUNS * 1000
    db.close()
    same(answers)
    return results


async def postgres_timings(url: str, messages: int) -> dict[str, float]:
    schema = "bench_" + secrets.token_hex(4)
    store = open_store(f"{url}?schema={schema}")
    await store.open()
    await store.migrate()
    await store.close()
    con = await asyncpg.connect(url)
    try:
        await con.execute(f'SET search_path TO "{schema}"')
        spooled, recipients = rows(messages)
        await con.copy_records_to_table(
            "messages",
            records=spooled,
            columns=["id", "account_id", "mail_from", "kind", "content", "size", "received_at"],
            schema_name=schema,
        )
        await con.copy_records_to_table(
            "recipients",
            records=recipients,
            columns=["message_id", "rcpt", "status", "next_attempt", "updated_at"],
            schema_name=schema,
        )
        await con.execute("ANALYZE")
        results, answers = {}, []
        for name, sql in (("backlog_sql", BACKLOG_SQL), ("join", JOIN_SQL)):
            answers.append(tuple(await con.fetchrow(sql)))
            started = time.perf_counter()
            for _ in range(RUNS):
                await con.fetchrow(sql)
            results[name] = (time.perf_counter() - started) / RUNS * 1000
        same(answers)
        return results
    finally:
        await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await con.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--storage", default="sqlite")
    args = parser.parse_args()
    if args.storage == "sqlite":
        results = await sqlite_timings(args.messages)
    else:
        results = await postgres_timings(args.storage, args.messages)
    summary = {
        "storage": "sqlite" if args.storage == "sqlite" else "postgresql",
        "recipients": args.messages * 10,
        "pending": (args.messages + 19) // 20 * 10,
        "backlog_sql_ms": round(results["backlog_sql"], 2),
        "join_ms": round(results["join"], 2),
        "ratio_join_to_backlog_sql": round(results["join"] / results["backlog_sql"], 1),
    }
    for key, value in summary.items():
        print(f"{key:30} {value}")
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
