"""SQLite backend: the events outbox (see relay.storage.events).

One writer commits at a time, so the order of `seq` is the order of commit: a reader that has
seen event N has seen every event before it, and `seq` is the whole cursor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.storage.events import stored_event
from relay.storage.sqlite.core import SqliteCore

if TYPE_CHECKING:
    import sqlite3

    from relay.storage.base import Event, NewEvent


def insert_events(db: sqlite3.Connection, events: list[NewEvent]) -> None:
    """Write `events` in the caller's transaction (with the fact they report)."""
    if events:
        db.executemany(
            "INSERT INTO events (id, account_id, type, at, message_id, recipient, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (e.id, e.account_id, e.type, e.at, e.message_id, e.recipient, e.data_json())
                for e in events
            ],
        )


class SqliteEvents(SqliteCore):
    """The events part of `SqliteStore`."""

    async def record_events(self, events: list[NewEvent]) -> None:
        """Write events whose fact is not stored otherwise (a recipient refused at RCPT)."""
        await self._write(lambda db: insert_events(db, events))

    async def events(
        self,
        account_id: str,
        *,
        after: str | None = None,
        types: frozenset[str] | None = None,
        limit: int = 100,
    ) -> list[Event]:
        """The account's events after the cursor `after`, oldest first."""
        start = int(after) if after and after.isdigit() else 0
        sql = (
            "SELECT seq, id, type, account_id, at, message_id, recipient, data FROM events"
            " WHERE account_id = ? AND seq > ?"
        )
        params: list[object] = [account_id, start]
        if types:
            sql += f" AND type IN ({', '.join('?' * len(types))})"
            params += sorted(types)
        rows = await self._fetch(sql + " ORDER BY seq LIMIT ?", [*params, limit])
        return [stored_event(tuple(row[1:]), str(row[0])) for row in rows]
