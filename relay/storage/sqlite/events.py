"""SQLite backend: the events outbox (see relay.storage.events).

One writer commits at a time, so the order of `seq` is the order of commit: a reader that has
seen event N has seen every event before it, and `seq` is the whole cursor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.errors import CursorError
from relay.storage.events import event_stats, stored_event
from relay.storage.records import WEBHOOK_COLUMNS, WebhookState
from relay.storage.sqlite.core import SqliteCore
from relay.storage.sqlite.journal import insert_journal

if TYPE_CHECKING:
    import sqlite3

    from relay.storage.records import Event, JournalEntry, NewEvent

PRUNE_CHUNK = 5000  # events deleted per transaction when pruning
MAX_SEQ = 2**63 - 1  # the largest sequence number either backend can hold


def insert_events(db: sqlite3.Connection, events: list[NewEvent]) -> None:
    """Write `events` in the caller's transaction (with the fact they report), and their counts."""
    if events:
        db.executemany(
            "INSERT INTO events (id, account_id, type, at, message_id, recipient, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (e.id, e.account_id, e.type, e.at, e.message_id, e.recipient, e.data_json())
                for e in events
            ],
        )
        db.executemany(
            "INSERT INTO account_stats (account_id, kind, bucket, count) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (account_id, kind, bucket) DO UPDATE SET count = count + excluded.count",
            event_stats(events),
        )


class SqliteEvents(SqliteCore):
    """The events part of `SqliteStore`."""

    async def record_events(
        self, events: list[NewEvent], journal: list[JournalEntry] | None = None
    ) -> None:
        """Write events whose fact is not stored otherwise (a recipient refused at RCPT)."""

        def operation(db: sqlite3.Connection) -> None:
            insert_events(db, events)
            insert_journal(db, journal or ())

        await self._write(operation)

    async def message_events(self, message_id: str, recipients: list[str]) -> list[Event]:
        """Events about `message_id`, then feedback about its recipients from its account."""
        columns = "seq, id, type, account_id, at, message_id, recipient, data"
        rows = list(
            await self._fetch(
                f"SELECT {columns} FROM events WHERE message_id = ? ORDER BY seq",  # noqa: S608
                (message_id,),
            )
        )
        accepted = [row for row in rows if row[2] == "message.accepted"]
        if accepted and recipients:
            account, since = accepted[0][3], accepted[0][4]
            rows += await self._fetch(
                f"SELECT {columns} FROM events WHERE recipient IN"  # noqa: S608
                f" ({', '.join('?' * len(recipients))}) AND account_id = ? AND type IN"
                " ('recipient.unsubscribed', 'recipient.complained', 'recipient.bounced')"
                " AND at >= ? AND (message_id IS NULL OR message_id = ?)",
                (*recipients, account, since, message_id),
            )
        unique = {row[0]: row for row in rows}
        return [
            stored_event(tuple(row[1:]), str(row[0]))
            for row in sorted(unique.values(), key=lambda r: (r[4], r[0]))
        ]

    async def events(
        self,
        account_id: str,
        *,
        after: str | None = None,
        types: frozenset[str] | None = None,
        limit: int = 100,
    ) -> list[Event]:
        """The account's events after the cursor `after`, oldest first.

        Raises `CursorError` for a cursor that is not a sequence number this store handed out.
        """
        start = 0
        if after is not None:
            if not (after.isascii() and after.isdigit()) or int(after) > MAX_SEQ:
                raise CursorError(f"not a cursor of this store: {after[:64]!r}")
            start = int(after)
        sql = (
            "SELECT seq, id, type, account_id, at, message_id, recipient, data FROM events"
            " WHERE account_id = ? AND seq > ?"
        )
        params: list[object] = [account_id, start]
        if types:
            sql += f" AND type IN ({', '.join('?' * len(types))})"
            params += sorted(types)
        rows = await self._fetch(sql + " ORDER BY seq LIMIT ?", [*params, limit])
        if not rows and start:
            # AUTOINCREMENT's high-water mark: pruning and deleting never lower it.
            issued = await self._fetch("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
            if start > (int(issued[0][0]) if issued else 0):
                raise CursorError(f"past the end of the events feed: {after}")
        return [stored_event(tuple(row[1:]), str(row[0])) for row in rows]

    async def events_behind(self, account_id: str, after: str | None) -> tuple[int, float | None]:
        """How many of the account's events follow `after`, and the oldest one's time."""
        start = int(after) if after and after.isascii() and after.isdigit() else 0
        rows = await self._fetch(
            "SELECT COUNT(*), MIN(at) FROM events WHERE account_id = ? AND seq > ?",
            (account_id, min(start, MAX_SEQ)),
        )
        return int(rows[0][0]), None if rows[0][1] is None else float(rows[0][1])

    async def events_tail(self, account_id: str) -> str | None:
        """The cursor of the account's newest event."""
        rows = await self._fetch("SELECT MAX(seq) FROM events WHERE account_id = ?", (account_id,))
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    async def webhook_lease(
        self,
        key: str,
        account_id: str,
        url: str,
        *,
        start: str | None,
        lease: str,
        now: float,
        lease_until: float,
    ) -> WebhookState | None:
        """Lease the endpoint if it is due and enabled (created at `start` if new)."""

        def operation(db: sqlite3.Connection) -> WebhookState | None:
            db.execute(
                "INSERT INTO webhook_state (key, account_id, url, cursor) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                (key, account_id, url, start),
            )
            cursor = db.execute(
                "UPDATE webhook_state SET lease = ?, lease_until = ? WHERE key = ?"
                " AND disabled_at IS NULL AND next_attempt <= ? AND lease_until <= ?",
                (lease, lease_until, key, now, now),
            )
            if cursor.rowcount != 1:
                return None
            row = db.execute(
                f"SELECT {WEBHOOK_COLUMNS} FROM webhook_state WHERE key = ?",  # noqa: S608
                (key,),
            ).fetchone()
            return WebhookState(*row)

        return await self._write(operation)

    async def webhook_advance(
        self, key: str, lease: str, *, cursor: str, sent: int = 1, lease_until: float | None = None
    ) -> bool:
        """Record the endpoint's place and `sent` more events (and renew the lease)."""

        def operation(db: sqlite3.Connection) -> bool:
            done = db.execute(
                "UPDATE webhook_state SET cursor = ?, delivered = delivered + ?, attempts = 0,"
                " failing_since = NULL, last_error = NULL,"
                " lease_until = COALESCE(?, lease_until) WHERE key = ? AND lease = ?",
                (cursor, sent, lease_until, key, lease),
            )
            return done.rowcount == 1

        return await self._write(operation)

    async def webhook_fail(
        self,
        key: str,
        lease: str,
        *,
        error: str,
        now: float,
        next_attempt: float,
        disable: bool,
    ) -> bool:
        """Record a failed attempt."""

        def operation(db: sqlite3.Connection) -> bool:
            done = db.execute(
                "UPDATE webhook_state SET attempts = attempts + 1, last_error = ?,"
                " failing_since = COALESCE(failing_since, ?), next_attempt = ?,"
                " disabled_at = CASE WHEN ? THEN ? ELSE NULL END, lease = NULL, lease_until = 0"
                " WHERE key = ? AND lease = ?",
                (error, now, next_attempt, disable, now, key, lease),
            )
            return done.rowcount == 1

        return await self._write(operation)

    async def webhook_release(self, key: str, lease: str) -> None:
        """Give the lease back."""
        await self._write(
            lambda db: db.execute(
                "UPDATE webhook_state SET lease = NULL, lease_until = 0"
                " WHERE key = ? AND lease = ?",
                (key, lease),
            )
        )

    async def webhook_states(self) -> list[WebhookState]:
        """Every endpoint's state."""
        rows = await self._fetch(
            f"SELECT {WEBHOOK_COLUMNS} FROM webhook_state ORDER BY account_id, url"  # noqa: S608
        )
        return [WebhookState(*row) for row in rows]

    async def webhook_enable(self, key: str, *, now: float) -> bool:
        """Enable a disabled endpoint again."""

        def operation(db: sqlite3.Connection) -> bool:
            done = db.execute(
                "UPDATE webhook_state SET disabled_at = NULL, failing_since = NULL, attempts = 0,"
                " next_attempt = ? WHERE key = ?",
                (now, key),
            )
            return done.rowcount == 1

        return await self._write(operation)

    async def webhook_rewind(self, key: str, account_id: str, *, since: float, now: float) -> bool:
        """Move the endpoint back to just before the first event at or after `since`."""

        def operation(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT MAX(seq) FROM events WHERE account_id = ? AND at < ?", (account_id, since)
            ).fetchone()
            cursor = None if row is None or row[0] is None else str(row[0])
            done = db.execute(
                "UPDATE webhook_state SET cursor = ?, next_attempt = ?, lease = NULL,"
                " lease_until = 0 WHERE key = ?",
                (cursor, now, key),
            )
            return done.rowcount == 1

        return await self._write(operation)

    async def prune_events(self, before: float) -> int:
        """Delete events older than `before` in chunks, so the writer is never held long."""
        total = 0
        while True:
            cursor = await self._write(
                lambda db: db.execute(
                    "DELETE FROM events WHERE seq IN"
                    " (SELECT seq FROM events WHERE at < ? ORDER BY seq LIMIT ?)",
                    (before, PRUNE_CHUNK),
                )
            )
            total += cursor.rowcount
            if cursor.rowcount < PRUNE_CHUNK:
                return total
