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

from relay.errors import StoreError
from relay.storage.events import stored_event
from relay.storage.postgres.core import DB_ERRORS, PostgresCore

if TYPE_CHECKING:
    import asyncpg

    from relay.storage.base import Event, NewEvent


async def insert_events(con: asyncpg.Connection, events: list[NewEvent]) -> None:
    """Write `events` in the caller's transaction (with the fact they report)."""
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


def _cursor(after: str | None) -> tuple[str, int]:
    txid, _, seq = (after or "").partition(".")
    if txid.isdigit() and seq.isdigit():
        return txid, int(seq)
    return "0", 0


class PostgresEvents(PostgresCore):
    """The events part of `PostgresStore`."""

    async def record_events(self, events: list[NewEvent]) -> None:
        """Write events whose fact is not stored otherwise (a recipient refused at RCPT)."""
        try:
            async with self._acquire() as con, con.transaction():
                await insert_events(con, events)
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

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
        return [stored_event(tuple(row)[2:], f"{row[0]}.{row[1]}") for row in rows]
