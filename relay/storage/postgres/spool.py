"""PostgreSQL backend: the spool: messages, recipients and their delivery leases."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.errors import StoreError
from relay.storage.base import (
    DeliveryJob,
    NewMessage,
    QueueEntry,
)
from relay.storage.postgres.core import DB_ERRORS, PostgresCore
from relay.storage.sql import BACKLOG_SQL

if TYPE_CHECKING:
    import asyncpg


async def _insert_message(con: asyncpg.Connection, message: NewMessage) -> None:
    await con.execute(
        "INSERT INTO messages (id, account_id, mail_from, kind, content, size, received_at,"
        " campaign) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        message.id,
        message.account_id,
        message.mail_from,
        message.kind,
        message.content,
        len(message.content),
        message.received_at,
        message.campaign,
    )
    await con.executemany(
        "INSERT INTO recipients (message_id, rcpt, next_attempt, updated_at)"
        " VALUES ($1, $2, $3, $3)",
        [(message.id, rcpt, message.received_at) for rcpt in message.recipients],
    )


class PostgresSpool(PostgresCore):
    """The spool part of `PostgresStore`."""

    async def spool(self, message: NewMessage) -> None:
        """Insert the message and its recipients in one transaction."""
        try:
            async with self._acquire() as con, con.transaction():
                await _insert_message(con, message)
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def claim(
        self, *, lease: str, now: float, lease_until: float, limit: int
    ) -> list[DeliveryJob]:
        """Lease due recipients; SKIP LOCKED keeps concurrent claimers apart."""
        rows = await self._fetch(
            # Mail of a suspended or terminated account is held: never claimed.
            "WITH picked AS (SELECT r.id FROM recipients r JOIN messages m ON m.id = r.message_id"
            " WHERE r.status = 'pending' AND r.next_attempt <= $2 AND r.lease_until <= $2"
            " AND NOT (m.kind = 'message' AND EXISTS (SELECT 1 FROM account_states s"
            " WHERE s.account_id = m.account_id AND s.state <> 'active'))"
            " ORDER BY r.next_attempt LIMIT $4 FOR UPDATE OF r SKIP LOCKED),"
            " leased AS (UPDATE recipients r SET lease = $1, lease_until = $3 FROM picked"
            " WHERE r.id = picked.id RETURNING r.id, r.message_id, r.rcpt, r.attempts)"
            " SELECT l.id, l.message_id, l.rcpt, l.attempts, m.account_id, m.mail_from,"
            " m.received_at, m.kind, m.campaign FROM leased l"
            " JOIN messages m ON m.id = l.message_id"
            " ORDER BY l.id",
            lease,
            now,
            lease_until,
            limit,
        )
        return [
            DeliveryJob(*tuple(row)[:8], lease=lease, campaign=row[8])  # type: ignore[misc]
            for row in rows
        ]

    async def content(self, message_id: str) -> bytes:
        """Return the spooled bytes of `message_id`."""
        rows = await self._fetch("SELECT content FROM messages WHERE id = $1", message_id)
        if not rows or rows[0][0] is None:
            raise StoreError(f"no spooled content for message {message_id}")
        return bytes(rows[0][0])

    async def delivered(self, job: DeliveryJob, *, reply: str, now: float) -> bool:
        """Mark `job` delivered."""
        return await self._finish(job, "delivered", reply, now, None)

    async def deferred(
        self, job: DeliveryJob, *, reply: str, now: float, next_attempt: float
    ) -> bool:
        """Count the attempt and schedule the next."""
        rows = await self._fetch(
            "UPDATE recipients SET attempts = attempts + 1, next_attempt = $1, lease = NULL,"
            " lease_until = 0, last_reply = $2, updated_at = $3 WHERE id = $4 AND lease = $5"
            " AND status = 'pending' RETURNING id",
            next_attempt,
            reply,
            now,
            job.recipient_id,
            job.lease,
        )
        return len(rows) == 1

    async def failed(
        self, job: DeliveryJob, *, reply: str, now: float, dsn: NewMessage | None
    ) -> bool:
        """Mark `job` failed and spool its DSN atomically."""
        return await self._finish(job, "failed", reply, now, dsn)

    async def _finish(
        self, job: DeliveryJob, status: str, reply: str, now: float, dsn: NewMessage | None
    ) -> bool:
        try:
            async with self._acquire() as con, con.transaction():
                done = await con.fetchval(
                    "UPDATE recipients SET status = $1, attempts = attempts + 1, lease = NULL,"
                    " lease_until = 0, last_reply = $2, updated_at = $3 WHERE id = $4"
                    " AND lease = $5 AND status = 'pending' RETURNING id",
                    status,
                    reply,
                    now,
                    job.recipient_id,
                    job.lease,
                )
                if done is None:
                    return False
                await con.execute(
                    "UPDATE messages SET content = NULL, completed_at = $1 WHERE id = $2"
                    " AND NOT EXISTS (SELECT 1 FROM recipients WHERE message_id = $2"
                    " AND status = 'pending')",
                    now,
                    job.message_id,
                )
                if dsn is not None:
                    await _insert_message(con, dsn)
                return True
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def renew(self, lease: str, *, lease_until: float) -> int:
        """Extend a lease held by deliveries in flight."""
        rows = await self._fetch(
            "UPDATE recipients SET lease_until = $1 WHERE lease = $2 AND status = 'pending'"
            " RETURNING id",
            lease_until,
            lease,
        )
        return len(rows)

    async def release(self, lease_prefix: str) -> int:
        """Give back leases held by this process."""
        rows = await self._fetch(
            "UPDATE recipients SET lease = NULL, lease_until = 0 WHERE lease LIKE $1"
            " AND status = 'pending' RETURNING id",
            lease_prefix.replace("%", "") + "%",
        )
        return len(rows)

    async def queue(self, limit: int = 1000) -> list[QueueEntry]:
        """Recipients still pending, oldest first."""
        rows = await self._fetch(
            "SELECT r.message_id, r.rcpt, m.account_id, m.mail_from, r.attempts, r.next_attempt,"
            " r.last_reply FROM recipients r JOIN messages m ON m.id = r.message_id"
            " WHERE r.status = 'pending' ORDER BY m.received_at, r.id LIMIT $1",
            limit,
        )
        return [QueueEntry(*tuple(row)) for row in rows]

    async def counts(self) -> dict[str, int]:
        """Recipients per state."""
        rows = await self._fetch("SELECT status, COUNT(*) FROM recipients GROUP BY status")
        return {row[0]: row[1] for row in rows}

    async def backlog(self) -> tuple[int, float | None]:
        """Pending recipients, and when the first of them in spool order was received."""
        [row] = await self._fetch(BACKLOG_SQL)
        return int(row[0]), None if row[1] is None else float(row[1])
