"""PostgreSQL backend: the journal (see relay.journal) and the audit trail of queue changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.errors import StoreError
from relay.storage.postgres.core import DB_ERRORS, PostgresCore
from relay.storage.records import JournalEntry, QueueAction, journal_from_row
from relay.storage.sql import JOURNAL_COLUMNS

if TYPE_CHECKING:
    from collections.abc import Iterable

    import asyncpg

PRUNE_CHUNK = 5000  # entries deleted per transaction when pruning


async def insert_journal(con: asyncpg.Connection, entries: Iterable[JournalEntry]) -> None:
    """Write `entries` in the caller's transaction: one statement, whatever their number."""
    items = list(entries)
    if not items:
        return
    await con.execute(
        "INSERT INTO journal (at, message_id, account_id, kind, recipient, detail)"
        " SELECT * FROM unnest($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[],"
        " $6::text[])",
        [e.at for e in items],
        [e.message_id for e in items],
        [e.account_id for e in items],
        [e.kind for e in items],
        [e.recipient for e in items],
        [e.detail_json() for e in items],
    )


async def insert_actions(con: asyncpg.Connection, actions: Iterable[QueueAction]) -> None:
    """Write the audit rows of a queue change in the caller's transaction."""
    await con.executemany(
        "INSERT INTO queue_actions (at, actor, action, reason, message_id, account_id, count)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [(a.at, a.actor, a.action, a.reason, a.message_id, a.account_id, a.count) for a in actions],
    )


class PostgresJournal(PostgresCore):
    """The journal part of `PostgresStore`."""

    async def record_journal(self, entries: list[JournalEntry]) -> None:
        """Write journal entries on their own."""
        try:
            async with self._acquire() as con:
                await insert_journal(con, entries)
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def journal(self, message_id: str) -> list[JournalEntry]:
        """Every entry about `message_id`, in the order written."""
        rows = await self._fetch(
            f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE message_id = $1 ORDER BY id",  # noqa: S608
            message_id,
        )
        return [journal_from_row(row) for row in rows]

    async def journal_messages(self, recipient: str, *, since: float, limit: int) -> list[str]:
        """Queue ids journaled for `recipient` since `since`, oldest first."""
        rows = await self._fetch(
            "SELECT message_id FROM journal WHERE recipient = $1 AND at >= $2"
            " GROUP BY message_id ORDER BY MIN(id) LIMIT $3",
            recipient,
            since,
            limit,
        )
        return [row[0] for row in rows]

    async def journal_window(
        self, *, since: float, until: float, after_id: int = 0, limit: int = 10_000
    ) -> list[JournalEntry]:
        """Mail, rcpt and data entries in [since, until), by id (policy replay)."""
        rows = await self._fetch(
            f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE at >= $1 AND at < $2 AND id > $3"  # noqa: S608
            " AND kind IN ('mail', 'rcpt', 'data') ORDER BY id LIMIT $4",
            since,
            until,
            after_id,
            limit,
        )
        return [journal_from_row(row) for row in rows]

    async def prune_journal(self, before: float) -> int:
        """Delete entries older than `before` in chunks, so no transaction runs long."""
        total = 0
        while True:
            rows = await self._fetch(
                "DELETE FROM journal WHERE id IN (SELECT id FROM journal WHERE at < $1"
                " ORDER BY at LIMIT $2) RETURNING 1",
                before,
                PRUNE_CHUNK,
            )
            total += len(rows)
            if len(rows) < PRUNE_CHUNK:
                return total

    async def queue_actions(self, message_id: str) -> list[QueueAction]:
        """Operators' changes that touched `message_id`, oldest first."""
        rows = await self._fetch(
            "SELECT a.at, a.actor, a.action, a.reason, a.message_id, a.account_id, a.count"
            " FROM queue_actions a JOIN messages m ON m.id = $1"
            " WHERE a.message_id = m.id OR (a.message_id IS NULL"
            " AND (a.account_id IS NULL OR a.account_id = m.account_id)"
            " AND a.at >= m.received_at AND a.at <= COALESCE(m.completed_at, a.at))"
            " ORDER BY a.id",
            message_id,
        )
        return [QueueAction(*tuple(row)) for row in rows]
