"""PostgreSQL backend: the spool: messages, recipients and their delivery leases."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from relay.errors import StoreError
from relay.storage.events import accepted_events, deleted_events, delivery_events
from relay.storage.postgres.core import DB_ERRORS, Batcher, PostgresCore
from relay.storage.postgres.events import insert_events
from relay.storage.postgres.journal import insert_actions, insert_journal
from relay.storage.records import (
    DeliveryJob,
    NewMessage,
    QueuedMessage,
    QueueEntry,
    queue_audit,
    queued_message_from_rows,
    render_journal,
    repeat_rows,
)
from relay.storage.sql import (
    BACKLOG_SQL,
    QUEUED_MESSAGE_COLUMNS,
    QUEUED_RECIPIENT_COLUMNS,
    queue_sql,
    queue_state_sql,
)

if TYPE_CHECKING:
    import asyncpg

    from relay.storage.records import QueueAction, QueueState


async def _insert_message(con: asyncpg.Connection, message: NewMessage) -> None:
    await con.execute(
        "INSERT INTO messages (id, account_id, mail_from, kind, content, size, received_at,"
        " campaign, dsn) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        message.id,
        message.account_id,
        message.mail_from,
        message.kind,
        message.content,
        len(message.content),
        message.received_at,
        message.campaign,
        message.envelope_dsn,
    )
    dsn = message.recipient_dsn
    await con.executemany(
        "INSERT INTO recipients (message_id, rcpt, next_attempt, updated_at, dsn)"
        " VALUES ($1, $2, $3, $3, $4)",
        [(message.id, rcpt, message.received_at, dsn.get(rcpt)) for rcpt in message.recipients],
    )
    await insert_events(con, [*accepted_events(message), *message.events])
    await insert_journal(con, message.journal)
    await _insert_repeats(con, repeat_rows(message))
    for notice in message.notices:
        await _insert_message(con, notice)


async def _insert_repeats(con: asyncpg.Connection, rows: list[tuple[str, str, str, float]]) -> None:
    """The copies of account messages, for the repeated-sends policy: one statement."""
    if rows:
        await con.execute(
            "INSERT INTO repeat_sends (account_id, campaign, recipient, at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[])",
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        )


# Messages ($2) whose last recipient is done: their content goes. Whether one still has a
# recipient to deliver is asked of that message's own recipients (by recipients_message, the
# only index its one condition can use, whatever the statistics say): as `NOT EXISTS (...
# status = 'pending')`, on statistics that said the queue was small, the planner read every
# pending recipient of the queue for the few messages of a delivery batch.
COMPLETED = (
    "UPDATE messages m SET content = NULL, completed_at = $1 WHERE m.id = ANY($2::text[])"
    " AND NOT (SELECT coalesce(bool_or(r.status = 'pending'), false) FROM recipients r"
    " WHERE r.message_id = m.id)"
)


class PostgresSpool(PostgresCore):
    """The spool part of `PostgresStore`."""

    @functools.cached_property
    def _spools(self) -> Batcher[NewMessage, None]:
        return Batcher(self._spool_many)

    @functools.cached_property
    def _deliveries(self) -> Batcher[tuple[DeliveryJob, str, float], bool]:
        return Batcher(self._delivered_many)

    def _batchers(self) -> list[Batcher[Any, Any]]:
        return [*super()._batchers(), self._spools, self._deliveries]

    async def spool(self, message: NewMessage) -> None:
        """Insert the message and its recipients; return once committed (batched)."""
        await self._spools.submit(message)

    async def _spool_many(self, messages: list[NewMessage]) -> list[None]:
        """Messages and their recipients in one transaction: one statement per table.

        A message's notices (a DSN of its recipients refused at DATA) go in with it.
        """
        spooled = messages
        messages = [each for m in spooled for each in (m, *m.notices)]
        rcpts = [
            (m.id, rcpt, m.received_at, m.recipient_dsn.get(rcpt))
            for m in messages
            for rcpt in m.recipients
        ]
        try:
            async with self._acquire() as con, con.transaction():
                await con.execute(
                    "INSERT INTO messages (id, account_id, mail_from, kind, content, size,"
                    " received_at, campaign, dsn) SELECT * FROM unnest($1::text[], $2::text[],"
                    " $3::text[], $4::text[], $5::bytea[], $6::int[], $7::float8[], $8::text[],"
                    " $9::text[])",
                    [m.id for m in messages],
                    [m.account_id for m in messages],
                    [m.mail_from for m in messages],
                    [m.kind for m in messages],
                    [m.content for m in messages],
                    [len(m.content) for m in messages],
                    [m.received_at for m in messages],
                    [m.campaign for m in messages],
                    [m.envelope_dsn for m in messages],
                )
                await con.execute(
                    "INSERT INTO recipients (message_id, rcpt, next_attempt, updated_at, dsn)"
                    " SELECT m, r, t, t, d FROM unnest($1::text[], $2::text[], $3::float8[],"
                    " $4::text[]) AS u(m, r, t, d)",
                    [row[0] for row in rcpts],
                    [row[1] for row in rcpts],
                    [row[2] for row in rcpts],
                    [row[3] for row in rcpts],
                )
                await insert_events(
                    con, [e for m in messages for e in (*accepted_events(m), *m.events)]
                )
                await insert_journal(con, [e for m in messages for e in m.journal])
                await _insert_repeats(con, [row for m in messages for row in repeat_rows(m)])
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc
        return [None] * len(spooled)

    async def claim(
        self, *, lease: str, now: float, lease_until: float, limit: int
    ) -> list[DeliveryJob]:
        """Lease due recipients; SKIP LOCKED keeps concurrent claimers apart."""
        # Mail of a suspended or terminated account is held: never claimed (migration 20).
        rows = await self._fetch(
            "SELECT * FROM claim_recipients($1, $2, $3, $4)", lease, now, lease_until, limit
        )
        rows.sort(key=lambda row: row[0])
        return [
            DeliveryJob(
                *tuple(row)[:8],  # type: ignore[misc]
                lease=lease,
                campaign=row[8],
                dsn=row[9],
                envelope_dsn=row[10],
            )
            for row in rows
        ]

    async def content(self, message_id: str) -> bytes:
        """Return the spooled bytes of `message_id`."""
        rows = await self._fetch("SELECT content FROM messages WHERE id = $1", message_id)
        if not rows or rows[0][0] is None:
            raise StoreError(f"no spooled content for message {message_id}")
        return bytes(rows[0][0])

    async def delivered(
        self, job: DeliveryJob, *, reply: str, now: float, dsn: NewMessage | None = None
    ) -> bool:
        """Mark `job` delivered (batched with other deliveries finishing meanwhile).

        One with a DSN to spool (NOTIFY=SUCCESS, rare) has its own transaction.
        """
        if dsn is not None:
            return await self._finish(job, "delivered", reply, now, dsn)
        return await self._deliveries.submit((job, reply, now))

    async def _delivered_many(self, done: list[tuple[DeliveryJob, str, float]]) -> list[bool]:
        """Recipients marked delivered, and the content of messages with none left dropped."""
        try:
            async with self._acquire() as con, con.transaction():
                rows = await con.fetch(
                    "UPDATE recipients r SET status = 'delivered', attempts = r.attempts + 1,"
                    " lease = NULL, lease_until = 0, last_reply = u.reply, updated_at = u.at"
                    " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::float8[])"
                    " AS u(id, lease, reply, at) WHERE r.id = u.id AND r.lease = u.lease"
                    " AND r.status = 'pending' RETURNING r.id, r.message_id, u.lease",
                    [job.recipient_id for job, _, _ in done],
                    [job.lease for job, _, _ in done],
                    [reply for _, reply, _ in done],
                    [at for _, _, at in done],
                )
                if rows:
                    finished = {(row[0], row[2]) for row in rows}
                    await insert_events(
                        con,
                        [
                            event
                            for job, reply, at in done
                            if (job.recipient_id, job.lease) in finished
                            for event in delivery_events("delivered", job, reply, at)
                        ],
                    )
                    await insert_journal(
                        con,
                        [
                            entry
                            for job, _, at in done
                            if (job.recipient_id, job.lease) in finished
                            for entry in render_journal(job, "delivered", at)
                        ],
                    )
                    await con.execute(
                        COMPLETED,
                        max(at for _, _, at in done),
                        list({row[1] for row in rows}),
                    )
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc
        finished = {(row[0], row[2]) for row in rows}
        return [(job.recipient_id, job.lease) in finished for job, _, _ in done]

    async def deferred(
        self, job: DeliveryJob, *, reply: str, now: float, next_attempt: float
    ) -> bool:
        """Count the attempt and schedule the next."""
        try:
            async with self._acquire() as con, con.transaction():
                done = await con.fetchval(
                    "UPDATE recipients SET attempts = attempts + 1, next_attempt = $1,"
                    " lease = NULL, lease_until = 0, last_reply = $2, updated_at = $3"
                    " WHERE id = $4 AND lease = $5 AND status = 'pending' RETURNING id",
                    next_attempt,
                    reply,
                    now,
                    job.recipient_id,
                    job.lease,
                )
                if done is None:
                    return False
                deferral = delivery_events("deferred", job, reply, now, next_attempt=next_attempt)
                await insert_events(con, deferral)
                await insert_journal(con, render_journal(job, "deferred", now))
                return True
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

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
                await insert_events(con, delivery_events(status, job, reply, now))
                await insert_journal(con, render_journal(job, status, now))
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

    async def retry_now(
        self,
        *,
        now: float,
        action: QueueAction,
        message_ids: list[str] | None = None,
        account_id: str | None = None,
    ) -> int:
        """Make pending recipients due at `now` (their leases, if any, stand)."""
        try:
            async with self._acquire() as con, con.transaction():
                rows = await con.fetch(
                    "UPDATE recipients r SET next_attempt = $1 WHERE r.status = 'pending'"
                    " AND ($2::text[] IS NULL OR r.message_id = ANY($2::text[]))"
                    " AND ($3::text IS NULL OR r.message_id IN"
                    " (SELECT id FROM messages WHERE account_id = $3)) RETURNING 1",
                    now,
                    message_ids,
                    account_id,
                )
                await insert_actions(con, queue_audit(action, message_ids, account_id, len(rows)))
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc
        return len(rows)

    async def hold(
        self,
        *,
        hold: bool,
        action: QueueAction,
        message_ids: list[str] | None = None,
        account_id: str | None = None,
    ) -> list[str]:
        """Hold (or release) messages with pending recipients; the ids changed."""
        try:
            async with self._acquire() as con, con.transaction():
                rows = await con.fetch(
                    "UPDATE messages m SET held_at = $1 WHERE m.completed_at IS NULL"
                    " AND (m.held_at IS NULL) = $2"
                    " AND EXISTS (SELECT 1 FROM recipients WHERE message_id = m.id"
                    " AND status = 'pending')"
                    " AND ($3::text[] IS NULL OR m.id = ANY($3::text[]))"
                    " AND ($4::text IS NULL OR m.account_id = $4) RETURNING m.id",
                    action.at if hold else None,
                    hold,
                    message_ids,
                    account_id,
                )
                changed = [row[0] for row in rows]
                named = changed if message_ids is not None else None
                if changed and not hold:  # released: due now, as Postfix's postsuper -H
                    await con.execute(
                        "UPDATE recipients SET next_attempt = LEAST(next_attempt, $1)"
                        " WHERE status = 'pending' AND message_id = ANY($2::text[])",
                        action.at,
                        changed,
                    )
                await insert_actions(
                    con,
                    queue_audit(action, named, account_id, 0),
                )
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc
        return changed

    async def delete_queued(
        self,
        message_ids: list[str],
        *,
        action: QueueAction,
        reply: str,
        dsns: list[NewMessage],
    ) -> int:
        """Delete the pending recipients of `message_ids`, spool `dsns`, audit it."""
        try:
            async with self._acquire() as con, con.transaction():
                rows = await con.fetch(
                    "UPDATE recipients SET status = 'deleted', lease = NULL, lease_until = 0,"
                    " last_reply = $1, updated_at = $2 WHERE status = 'pending'"
                    " AND message_id = ANY($3::text[]) RETURNING message_id, rcpt, attempts",
                    reply,
                    action.at,
                    message_ids,
                )
                await con.execute(
                    f"{COMPLETED} AND m.completed_at IS NULL",
                    action.at,
                    message_ids,
                )
                owners = await con.fetch(
                    "SELECT id, account_id FROM messages WHERE id = ANY($1::text[])"
                    " AND kind = 'message' AND account_id IS NOT NULL",
                    message_ids,
                )
                accounts = {row[0]: row[1] for row in owners}
                deleted = [tuple(row) for row in rows]
                await insert_events(
                    con, deleted_events(deleted, accounts, reply=reply, now=action.at)
                )
                for dsn in dsns:
                    await _insert_message(con, dsn)
                await insert_actions(con, queue_audit(action, message_ids, None, len(rows)))
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc
        return len(rows)

    async def queue(
        self,
        limit: int = 1000,
        *,
        account_id: str | None = None,
        state: QueueState | None = None,
        now: float = 0.0,
    ) -> list[QueueEntry]:
        """Recipients still pending, oldest first, each with its state at `now`."""
        rows = await self._fetch(
            queue_sql("$1") + " AND ($2::text IS NULL OR m.account_id = $2)"
            f" AND ($3::text IS NULL OR {queue_state_sql('$1')} = $3)"
            " ORDER BY m.received_at, r.id LIMIT $4",
            now,
            account_id,
            state,
            limit,
        )
        return [QueueEntry(*tuple(row)) for row in rows]

    async def queued_message(self, message_id: str) -> QueuedMessage | None:
        """One message of the spool with all its recipients."""
        found = await self._fetch(
            f"SELECT {QUEUED_MESSAGE_COLUMNS} FROM messages WHERE id = $1",  # noqa: S608
            message_id,
        )
        if not found:
            return None
        rows = await self._fetch(
            f"SELECT {QUEUED_RECIPIENT_COLUMNS} FROM recipients"  # noqa: S608
            " WHERE message_id = $1 ORDER BY id",
            message_id,
        )
        return queued_message_from_rows(found[0], rows)

    async def queue_summary(self, now: float) -> dict[str, tuple[int, float]]:
        """Pending recipients by queue state: how many, the oldest message's arrival."""
        rows = await self._fetch(
            f"SELECT {queue_state_sql('$1')}, COUNT(*), MIN(m.received_at)"  # noqa: S608
            " FROM recipients r JOIN messages m ON m.id = r.message_id"
            " WHERE r.status = 'pending' GROUP BY 1",
            now,
        )
        return {str(state): (int(count), float(oldest)) for state, count, oldest in rows}

    async def counts(self) -> dict[str, int]:
        """Recipients per state."""
        rows = await self._fetch("SELECT status, COUNT(*) FROM recipients GROUP BY status")
        return {row[0]: row[1] for row in rows}

    async def backlog(self) -> tuple[int, float | None]:
        """Pending recipients, and when the first of them in spool order was received."""
        [row] = await self._fetch(BACKLOG_SQL)
        return int(row[0]), None if row[1] is None else float(row[1])
