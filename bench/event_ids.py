"""Inserting events into a large SQLite events table: random ids against time-ordered ones.

`events.id` has a unique index. With random ids (`evt_` and 24 random hex digits, the format
before 2026-11-30) each insert lands anywhere in that index; with the relay's ids (the creation
time in milliseconds first, `relay.storage.records.new_event_id`) each lands at its end. Both
tables are filled to `--rows` events, then take `--batches` group commits of `--per` events
with a cache smaller than the index (`--cache-mib`), alternating, in one run: CPU per insert.

    .venv/bin/python bench/event_ids.py [--rows 1000000] [--batches 2000] [--per 8]
"""

from __future__ import annotations

import argparse
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from relay.storage.records import new_event_id

if TYPE_CHECKING:
    from collections.abc import Callable


def random_id() -> str:
    """The event id format before the time-ordered one."""
    return f"evt_{secrets.token_hex(12)}"


def measure(work: Path, new_id: Callable[[], str], args: argparse.Namespace) -> float:
    """Microseconds of CPU per insert into a table of `args.rows` events made with `new_id`."""
    path = work / f"events-{secrets.token_hex(4)}.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
        " payload TEXT)"
    )
    payload = "x" * 200
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO events (id, payload) VALUES (?, ?)",
        ((new_id(), payload) for _ in range(args.rows)),
    )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute(f"PRAGMA cache_size=-{args.cache_mib * 1024}")
    started = time.process_time()
    for _ in range(args.batches):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO events (id, payload) VALUES (?, ?)",
            ((new_id(), payload) for _ in range(args.per)),
        )
        db.execute("COMMIT")
    cpu = time.process_time() - started
    db.close()
    return 1e6 * cpu / (args.batches * args.per)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--per", type=int, default=8, help="events per group commit")
    parser.add_argument("--cache-mib", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="optin-relay-events-") as folder:
        work = Path(folder)
        for _ in range(args.repeat):
            before = measure(work, random_id, args)
            after = measure(work, new_event_id, args)
            print(
                f"{args.rows:,} events: random ids {before:.1f} us CPU per insert, "
                f"time-ordered {after:.1f} us (ratio {before / after:.2f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
