"""SQLite backend: the journal (see relay.journal) and the audit trail of queue changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.storage.records import JournalEntry, QueueAction, journal_from_row
from relay.storage.sql import JOURNAL_COLUMNS
from relay.storage.sqlite.core import SqliteCore

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable

PRUNE_CHUNK = 5000  # entries deleted per transaction when pruning


def insert_journal(db: sqlite3.Connection, entries: Iterable[JournalEntry]) -> None:
    """Write `entries` in the caller's transaction (with the decision or fact they record)."""
    rows = [
        (e.at, e.message_id, e.account_id, e.kind, e.recipient, e.detail_json()) for e in entries
    ]
    if rows:
        db.executemany(
            "INSERT INTO journal (at, message_id, account_id, kind, recipient, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )


def insert_actions(db: sqlite3.Connection, actions: Iterable[QueueAction]) -> None:
    """Write the audit rows of a queue change in the caller's transaction."""
    db.executemany(
        "INSERT INTO queue_actions (at, actor, action, reason, message_id, account_id, count)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(a.at, a.actor, a.action, a.reason, a.message_id, a.account_id, a.count) for a in actions],
    )


class SqliteJournal(SqliteCore):
    """The journal part of `SqliteStore`."""

    async def record_journal(self, entries: list[JournalEntry]) -> None:
        """Write journal entries on their own."""
        await self._write(lambda db: insert_journal(db, entries))

    async def journal(self, message_id: str) -> list[JournalEntry]:
        """Every entry about `message_id`, in the order written."""
        rows = await self._fetch(
            f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE message_id = ? ORDER BY id",  # noqa: S608
            (message_id,),
        )
        return [journal_from_row(row) for row in rows]

    async def journal_messages(self, recipient: str, *, since: float, limit: int) -> list[str]:
        """Queue ids journaled for `recipient` since `since`, oldest first."""
        rows = await self._fetch(
            "SELECT message_id FROM journal WHERE recipient = ? AND at >= ?"
            " GROUP BY message_id ORDER BY MIN(id) LIMIT ?",
            (recipient, since, limit),
        )
        return [row[0] for row in rows]

    async def journal_window(
        self, *, since: float, until: float, after_id: int = 0, limit: int = 10_000
    ) -> list[JournalEntry]:
        """Mail, rcpt and data entries in [since, until), by id (policy replay)."""
        rows = await self._fetch(
            f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE at >= ? AND at < ? AND id > ?"  # noqa: S608
            " AND kind IN ('mail', 'rcpt', 'data') ORDER BY id LIMIT ?",
            (since, until, after_id, limit),
        )
        return [journal_from_row(row) for row in rows]

    async def prune_journal(self, before: float) -> int:
        """Delete entries older than `before` in chunks, so the writer is never held long."""
        total = 0
        while True:
            cursor = await self._write(
                lambda db: db.execute(
                    "DELETE FROM journal WHERE id IN"
                    " (SELECT id FROM journal WHERE at < ? ORDER BY at LIMIT ?)",
                    (before, PRUNE_CHUNK),
                )
            )
            total += cursor.rowcount
            if cursor.rowcount < PRUNE_CHUNK:
                return total

    async def queue_actions(self, message_id: str) -> list[QueueAction]:
        """Operators' changes that touched `message_id`, oldest first."""
        rows = await self._fetch(
            "SELECT a.at, a.actor, a.action, a.reason, a.message_id, a.account_id, a.count"
            " FROM queue_actions a JOIN messages m ON m.id = ?"
            " WHERE a.message_id = m.id OR (a.message_id IS NULL"
            " AND (a.account_id IS NULL OR a.account_id = m.account_id)"
            " AND a.at >= m.received_at AND a.at <= COALESCE(m.completed_at, a.at))"
            " ORDER BY a.id",
            (message_id,),
        )
        return [QueueAction(*row) for row in rows]
