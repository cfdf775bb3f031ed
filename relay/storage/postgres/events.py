"""PostgreSQL backend: the events outbox (see relay.storage.events).

Sequence values are taken when a row is inserted, not when it commits: with several relays on
one database, event 11 can be visible before event 10 is. So each event also records its
transaction id (`txid`), a reader pages by (txid, seq), and it returns only events of
transactions older than the oldest one still running (`pg_snapshot_xmin`): an event that
commits later always sorts after every cursor handed out before, so paging never skips or
repeats one. (A transaction left open elsewhere holds the feed back until it ends.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.errors import CursorError, StoreError
from relay.storage.events import event_stats, stored_event
from relay.storage.postgres.core import DB_ERRORS, PostgresCore
from relay.storage.postgres.journal import insert_journal
from relay.storage.records import WEBHOOK_COLUMNS, WebhookState

if TYPE_CHECKING:
    import asyncpg

    from relay.storage.records import Event, JournalEntry, NewEvent

PRUNE_CHUNK = 5000  # events deleted per transaction when pruning


async def insert_events(con: asyncpg.Connection, events: list[NewEvent]) -> None:
    """Write `events` in the caller's transaction (with the fact they report), and their counts."""
    if not events:
        return
    await con.execute(
        "INSERT INTO events (id, account_id, type, at, message_id, recipient, data)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::text[],"
        " $6::text[], $7::text[])",
        [e.id for e in events],
        [e.account_id for e in events],
        [e.type for e in events],
        [e.at for e in events],
        [e.message_id for e in events],
        [e.recipient for e in events],
        [e.data_json() for e in events],
    )
    counts = event_stats(events)
    if counts:
        await con.execute(
            "INSERT INTO account_stats (account_id, kind, bucket, count)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::bigint[])"
            " ON CONFLICT (account_id, kind, bucket) DO UPDATE"
            " SET count = account_stats.count + excluded.count",
            [row[0] for row in counts],
            [row[1] for row in counts],
            [row[2] for row in counts],
            [row[3] for row in counts],
        )


MAX_SEQ = 2**63 - 1  # bigint; a transaction id (xid8) fits in 64 bits unsigned
MAX_TXID = 2**64 - 1


def _cursor(after: str | None) -> tuple[str, int]:
    """The cursor's (txid, seq), `("0", 0)` for the start; `CursorError` if it is not one."""
    if after is None:
        return "0", 0
    txid, dot, seq = after.partition(".")
    if not (dot and txid.isascii() and seq.isascii() and txid.isdigit() and seq.isdigit()):
        raise CursorError(f"not a cursor of this store: {after[:64]!r}")
    if int(txid) > MAX_TXID or int(seq) > MAX_SEQ:
        raise CursorError(f"past the end of the events feed: {after[:64]}")
    return txid, int(seq)


class PostgresEvents(PostgresCore):
    """The events part of `PostgresStore`."""

    async def record_events(
        self, events: list[NewEvent], journal: list[JournalEntry] | None = None
    ) -> None:
        """Write events whose fact is not stored otherwise (a recipient refused at RCPT)."""
        try:
            async with self._acquire() as con, con.transaction():
                await insert_events(con, events)
                await insert_journal(con, journal or ())
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def message_events(self, message_id: str, recipients: list[str]) -> list[Event]:
        """Events about `message_id`, then feedback about its recipients from its account."""
        columns = "seq, id, type, account_id, at, message_id, recipient, data"
        rows = await self._fetch(
            f"SELECT {columns} FROM events WHERE message_id = $1 ORDER BY seq",  # noqa: S608
            message_id,
        )
        accepted = [row for row in rows if row[2] == "message.accepted"]
        if accepted and recipients:
            rows += await self._fetch(
                f"SELECT {columns} FROM events WHERE recipient = ANY($1::text[])"  # noqa: S608
                " AND account_id = $2 AND type IN"
                " ('recipient.unsubscribed', 'recipient.complained', 'recipient.bounced')"
                " AND at >= $3 AND (message_id IS NULL OR message_id = $4)",
                recipients,
                accepted[0][3],
                accepted[0][4],
                message_id,
            )
        unique = {row[0]: tuple(row) for row in rows}
        return [
            stored_event(row[1:], str(row[0]))
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
        """The account's events after the cursor `after` (`TXID.SEQ`), oldest first."""
        txid, seq = _cursor(after)
        sql = (
            "SELECT txid::text, seq, id, type, account_id, at, message_id, recipient, data"
            " FROM events WHERE account_id = $1 AND (txid, seq) > ($2::text::xid8, $3)"
            " AND txid < pg_snapshot_xmin(pg_current_snapshot())"
        )
        args: list[object] = [account_id, txid, seq, limit]
        if types:
            sql += " AND type = ANY($5::text[])"
            args.append(sorted(types))
        rows = await self._fetch(sql + " ORDER BY txid, seq LIMIT $4", *args)
        if not rows and after is not None:
            # Handed out by no one: a transaction that has not started yet, or a number the
            # sequence never reached.
            ahead = await self._fetch(
                "SELECT $1::text::xid8 >= pg_snapshot_xmax(pg_current_snapshot())"
                " OR $2 > coalesce(pg_sequence_last_value("
                "pg_get_serial_sequence('events', 'seq')::regclass), 0)",
                txid,
                seq,
            )
            if ahead[0][0]:
                raise CursorError(f"past the end of the events feed: {after}")
        return [stored_event(tuple(row)[2:], f"{row[0]}.{row[1]}") for row in rows]

    async def events_behind(self, account_id: str, after: str | None) -> tuple[int, float | None]:
        """How many of the account's visible events follow `after`, and the oldest one's time."""
        try:
            txid, seq = _cursor(after)
        except CursorError:
            txid, seq = str(MAX_TXID), MAX_SEQ
        rows = await self._fetch(
            "SELECT COUNT(*), MIN(at) FROM events WHERE account_id = $1"
            " AND (txid, seq) > ($2::text::xid8, $3)"
            " AND txid < pg_snapshot_xmin(pg_current_snapshot())",
            account_id,
            txid,
            seq,
        )
        return int(rows[0][0]), None if rows[0][1] is None else float(rows[0][1])

    async def events_tail(self, account_id: str) -> str | None:
        """The cursor of the account's newest event that a reader can see."""
        rows = await self._fetch(
            "SELECT txid::text, seq FROM events WHERE account_id = $1"
            " AND txid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY txid DESC, seq DESC"
            " LIMIT 1",
            account_id,
        )
        return f"{rows[0][0]}.{rows[0][1]}" if rows else None

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
        try:
            async with self._acquire() as con, con.transaction():
                await con.execute(
                    "INSERT INTO webhook_state (key, account_id, url, cursor)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
                    key,
                    account_id,
                    url,
                    start,
                )
                row = await con.fetchrow(
                    "UPDATE webhook_state SET lease = $2, lease_until = $3 WHERE key = $1"  # noqa: S608
                    " AND disabled_at IS NULL AND next_attempt <= $4 AND lease_until <= $4"
                    f" RETURNING {WEBHOOK_COLUMNS}",
                    key,
                    lease,
                    lease_until,
                    now,
                )
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc
        return None if row is None else WebhookState(*tuple(row))

    async def webhook_advance(
        self, key: str, lease: str, *, cursor: str, sent: int = 1, lease_until: float | None = None
    ) -> bool:
        """Record the endpoint's place and `sent` more events (and renew the lease)."""
        rows = await self._fetch(
            "UPDATE webhook_state SET cursor = $1, delivered = delivered + $4, attempts = 0,"
            " failing_since = NULL, last_error = NULL,"
            " lease_until = COALESCE($5::float8, lease_until)"
            " WHERE key = $2 AND lease = $3 RETURNING 1",
            cursor,
            key,
            lease,
            sent,
            lease_until,
        )
        return len(rows) == 1

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
        rows = await self._fetch(
            "UPDATE webhook_state SET attempts = attempts + 1, last_error = $1,"
            " failing_since = COALESCE(failing_since, $2), next_attempt = $3,"
            " disabled_at = CASE WHEN $4 THEN $2 ELSE NULL END, lease = NULL, lease_until = 0"
            " WHERE key = $5 AND lease = $6 RETURNING 1",
            error,
            now,
            next_attempt,
            disable,
            key,
            lease,
        )
        return len(rows) == 1

    async def webhook_release(self, key: str, lease: str) -> None:
        """Give the lease back."""
        await self._fetch(
            "UPDATE webhook_state SET lease = NULL, lease_until = 0 WHERE key = $1 AND lease = $2",
            key,
            lease,
        )

    async def webhook_states(self) -> list[WebhookState]:
        """Every endpoint's state."""
        rows = await self._fetch(
            f"SELECT {WEBHOOK_COLUMNS} FROM webhook_state ORDER BY account_id, url"  # noqa: S608
        )
        return [WebhookState(*tuple(row)) for row in rows]

    async def webhook_enable(self, key: str, *, now: float) -> bool:
        """Enable a disabled endpoint again."""
        rows = await self._fetch(
            "UPDATE webhook_state SET disabled_at = NULL, failing_since = NULL, attempts = 0,"
            " next_attempt = $1 WHERE key = $2 RETURNING 1",
            now,
            key,
        )
        return len(rows) == 1

    async def webhook_rewind(self, key: str, account_id: str, *, since: float, now: float) -> bool:
        """Move the endpoint back to just before the first event at or after `since`."""
        rows = await self._fetch(
            "SELECT txid::text, seq FROM events WHERE account_id = $1 AND at < $2"
            " ORDER BY txid DESC, seq DESC LIMIT 1",
            account_id,
            since,
        )
        cursor = f"{rows[0][0]}.{rows[0][1]}" if rows else None
        done = await self._fetch(
            "UPDATE webhook_state SET cursor = $1, next_attempt = $2, lease = NULL,"
            " lease_until = 0 WHERE key = $3 RETURNING 1",
            cursor,
            now,
            key,
        )
        return len(done) == 1

    async def prune_events(self, before: float) -> int:
        """Delete events older than `before` in chunks (short transactions)."""
        total = 0
        while True:
            rows = await self._fetch(
                "DELETE FROM events WHERE seq IN"
                " (SELECT seq FROM events WHERE at < $1 ORDER BY seq LIMIT $2) RETURNING 1",
                before,
                PRUNE_CHUNK,
            )
            total += len(rows)
            if len(rows) < PRUNE_CHUNK:
                return total
