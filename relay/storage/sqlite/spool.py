"""SQLite backend: the spool: messages, recipients and their delivery leases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relay.errors import StoreError
from relay.storage.events import accepted_events, deleted_events, delivery_events
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
from relay.storage.sqlite.core import SqliteCore
from relay.storage.sqlite.events import insert_events
from relay.storage.sqlite.journal import insert_actions, insert_journal

if TYPE_CHECKING:
    import sqlite3

    from relay.storage.records import QueueAction, QueueState


# Recipients due for delivery now (parameters: now, now). A message on hold, and the mail of a
# suspended or terminated account, is never due.
_DUE = (
    "FROM recipients r JOIN messages m ON m.id = r.message_id"
    " WHERE r.status = 'pending' AND r.next_attempt <= ? AND r.lease_until <= ?"
    " AND m.held_at IS NULL"
    " AND NOT (m.kind = 'message' AND EXISTS (SELECT 1 FROM account_states s"
    " WHERE s.account_id = m.account_id AND s.state <> 'active'))"
)


def _insert_message(db: sqlite3.Connection, message: NewMessage) -> None:
    db.execute(
        "INSERT INTO messages (id, account_id, mail_from, kind, content, size, received_at,"
        " campaign, dsn) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message.id,
            message.account_id,
            message.mail_from,
            message.kind,
            message.content,
            len(message.content),
            message.received_at,
            message.campaign,
            message.envelope_dsn,
        ),
    )
    dsn = message.recipient_dsn
    db.executemany(
        "INSERT INTO recipients (message_id, rcpt, next_attempt, updated_at, dsn)"
        " VALUES (?, ?, ?, ?, ?)",
        [
            (message.id, rcpt, message.received_at, message.received_at, dsn.get(rcpt))
            for rcpt in message.recipients
        ],
    )
    insert_events(db, [*accepted_events(message), *message.events])
    insert_journal(db, message.journal)
    db.executemany(
        "INSERT INTO repeat_sends (account_id, campaign, recipient, at) VALUES (?, ?, ?, ?)",
        repeat_rows(message),
    )
    for notice in message.notices:
        _insert_message(db, notice)


def _finish(
    db: sqlite3.Connection,
    job: DeliveryJob,
    status: str,
    reply: str,
    now: float,
    *,
    dsn: NewMessage | None = None,
) -> bool:
    """The final outcome of `job` and the DSN it sends, or False if its lease was lost."""
    cursor = db.execute(
        "UPDATE recipients SET status = ?, attempts = attempts + 1, lease = NULL, lease_until = 0,"
        " last_reply = ?, updated_at = ? WHERE id = ? AND lease = ? AND status = 'pending'",
        (status, reply, now, job.recipient_id, job.lease),
    )
    if cursor.rowcount != 1:
        return False
    # The content is only needed while a recipient is pending; drop it once none is.
    db.execute(
        "UPDATE messages SET content = NULL, completed_at = ? WHERE id = ? AND NOT EXISTS"
        " (SELECT 1 FROM recipients WHERE message_id = ? AND status = 'pending')",
        (now, job.message_id, job.message_id),
    )
    insert_events(db, delivery_events(status, job, reply, now))
    insert_journal(db, render_journal(job, status, now))
    if dsn is not None:
        _insert_message(db, dsn)
    return True


class SqliteSpool(SqliteCore):
    """The spool part of `SqliteStore`."""

    async def spool(self, message: NewMessage) -> None:
        """Insert the message and its recipients; return once committed (durable)."""

        def operation(db: sqlite3.Connection) -> None:
            _insert_message(db, message)

        await self._write(operation)

    async def claim(
        self, *, lease: str, now: float, lease_until: float, limit: int
    ) -> list[DeliveryJob]:
        """Lease due recipients whose earlier lease (if any) has run out."""
        # Once a claim found nothing, the next ones ask the reader first: an idle relay (or one
        # holding a suspended account's mail) then never takes the write lock, which the CLI
        # and other processes need. A busy relay claims straight away.
        if self._nothing_due and not await self._fetch(f"SELECT 1 {_DUE} LIMIT 1", (now, now)):
            return []

        def operation(db: sqlite3.Connection) -> list[Any]:
            db.execute(
                "UPDATE recipients SET lease = ?, lease_until = ? WHERE id IN ("  # noqa: S608
                f" SELECT r.id {_DUE} ORDER BY r.next_attempt LIMIT ?)",
                (lease, lease_until, now, now, limit),
            )
            return db.execute(
                "SELECT r.id, r.message_id, r.rcpt, r.attempts, m.account_id, m.mail_from,"
                " m.received_at, m.kind, m.campaign, r.dsn, m.dsn FROM recipients r"
                " JOIN messages m ON m.id = r.message_id"
                " WHERE r.lease = ? AND r.status = 'pending' ORDER BY r.id",
                (lease,),
            ).fetchall()

        rows = await self._write(operation)
        self._nothing_due = not rows
        return [
            DeliveryJob(
                *row[:8],  # type: ignore[misc]
                lease=lease,
                campaign=row[8],
                dsn=row[9],
                envelope_dsn=row[10],
            )
            for row in rows
        ]

    async def content(self, message_id: str) -> bytes:
        """Return the spooled bytes of `message_id`."""
        rows = await self._fetch("SELECT content FROM messages WHERE id = ?", (message_id,))
        if not rows or rows[0][0] is None:
            raise StoreError(f"no spooled content for message {message_id}")
        return bytes(rows[0][0])

    async def delivered(
        self, job: DeliveryJob, *, reply: str, now: float, dsn: NewMessage | None = None
    ) -> bool:
        """Mark `job` delivered (and spool the DSN the sender asked for, atomically)."""
        return await self._write(lambda db: _finish(db, job, "delivered", reply, now, dsn=dsn))

    async def deferred(
        self, job: DeliveryJob, *, reply: str, now: float, next_attempt: float
    ) -> bool:
        """Count the attempt and schedule the next."""

        def operation(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE recipients SET attempts = attempts + 1, next_attempt = ?, lease = NULL,"
                " lease_until = 0, last_reply = ?, updated_at = ? WHERE id = ? AND lease = ?"
                " AND status = 'pending'",
                (next_attempt, reply, now, job.recipient_id, job.lease),
            )
            if cursor.rowcount != 1:
                return False
            insert_events(
                db, delivery_events("deferred", job, reply, now, next_attempt=next_attempt)
            )
            insert_journal(db, render_journal(job, "deferred", now))
            return True

        return await self._write(operation)

    async def failed(
        self, job: DeliveryJob, *, reply: str, now: float, dsn: NewMessage | None
    ) -> bool:
        """Mark `job` failed and spool its DSN atomically."""
        return await self._write(lambda db: _finish(db, job, "failed", reply, now, dsn=dsn))

    async def renew(self, lease: str, *, lease_until: float) -> int:
        """Extend a lease held by deliveries in flight."""

        def operation(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "UPDATE recipients SET lease_until = ? WHERE lease = ? AND status = 'pending'",
                (lease_until, lease),
            )
            return cursor.rowcount

        return await self._write(operation)

    async def release(self, lease_prefix: str) -> int:
        """Give back leases held by this process."""

        def operation(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "UPDATE recipients SET lease = NULL, lease_until = 0"
                " WHERE lease LIKE ? AND status = 'pending'",
                (lease_prefix.replace("%", "") + "%",),
            )
            return cursor.rowcount

        return await self._write(operation)

    async def retry_now(
        self,
        *,
        now: float,
        action: QueueAction,
        message_ids: list[str] | None = None,
        account_id: str | None = None,
    ) -> int:
        """Make pending recipients due at `now` (their leases, if any, stand)."""
        sql = "UPDATE recipients SET next_attempt = ? WHERE status = 'pending'"
        params: list[object] = [now]
        if message_ids is not None:
            sql += f" AND message_id IN ({', '.join('?' * len(message_ids))})"
            params += message_ids
        if account_id is not None:
            sql += " AND message_id IN (SELECT id FROM messages WHERE account_id = ?)"
            params.append(account_id)

        def operation(db: sqlite3.Connection) -> int:
            count = db.execute(sql, params).rowcount
            insert_actions(db, queue_audit(action, message_ids, account_id, count))
            return count

        self._nothing_due = False
        return await self._write(operation)

    async def hold(
        self,
        *,
        hold: bool,
        action: QueueAction,
        message_ids: list[str] | None = None,
        account_id: str | None = None,
    ) -> list[str]:
        """Hold (or release) messages with pending recipients; the ids changed."""
        sql = (
            "UPDATE messages SET held_at = ? WHERE completed_at IS NULL"  # noqa: S608
            f" AND held_at IS {'' if hold else 'NOT '}NULL"
            " AND EXISTS (SELECT 1 FROM recipients WHERE message_id = messages.id"
            " AND status = 'pending')"
        )
        params: list[object] = [action.at if hold else None]
        if message_ids is not None:
            sql += f" AND id IN ({', '.join('?' * len(message_ids))})"
            params += message_ids
        if account_id is not None:
            sql += " AND account_id = ?"
            params.append(account_id)

        def operation(db: sqlite3.Connection) -> list[str]:
            changed = [row[0] for row in db.execute(sql + " RETURNING id", params)]
            named = changed if message_ids is not None else None
            if changed and not hold:  # released: due now, as Postfix's postsuper -H
                marks = ", ".join("?" * len(changed))
                db.execute(
                    "UPDATE recipients SET next_attempt = MIN(next_attempt, ?)"  # noqa: S608
                    f" WHERE status = 'pending' AND message_id IN ({marks})",
                    (action.at, *changed),
                )
            insert_actions(db, queue_audit(action, named, account_id, 0))
            return changed

        self._nothing_due = False
        return await self._write(operation)

    async def delete_queued(
        self,
        message_ids: list[str],
        *,
        action: QueueAction,
        reply: str,
        dsns: list[NewMessage],
    ) -> int:
        """Delete the pending recipients of `message_ids`, spool `dsns`, audit it."""
        marks = ", ".join("?" * len(message_ids))

        def operation(db: sqlite3.Connection) -> int:
            rows = db.execute(
                "UPDATE recipients SET status = 'deleted', lease = NULL, lease_until = 0,"  # noqa: S608
                f" last_reply = ?, updated_at = ? WHERE status = 'pending' AND message_id IN"
                f" ({marks}) RETURNING message_id, rcpt, attempts",
                (reply, action.at, *message_ids),
            ).fetchall()
            db.execute(
                "UPDATE messages SET content = NULL, completed_at = ? WHERE id IN"  # noqa: S608
                f" ({marks}) AND completed_at IS NULL AND NOT EXISTS (SELECT 1 FROM recipients"
                " WHERE message_id = messages.id AND status = 'pending')",
                (action.at, *message_ids),
            )
            accounts = dict(
                db.execute(
                    f"SELECT id, account_id FROM messages WHERE id IN ({marks})"  # noqa: S608
                    " AND kind = 'message' AND account_id IS NOT NULL",
                    message_ids,
                ).fetchall()
            )
            insert_events(db, deleted_events(rows, accounts, reply=reply, now=action.at))
            for dsn in dsns:
                _insert_message(db, dsn)
            insert_actions(db, queue_audit(action, message_ids, None, len(rows)))
            return len(rows)

        return await self._write(operation)

    async def queue(
        self,
        limit: int = 1000,
        *,
        account_id: str | None = None,
        state: QueueState | None = None,
        now: float = 0.0,
    ) -> list[QueueEntry]:
        """Recipients still pending, oldest first, each with its state at `now`."""
        sql = queue_sql("?")
        params: list[object] = [now]
        if account_id is not None:
            sql += " AND m.account_id = ?"
            params.append(account_id)
        if state is not None:
            sql += f" AND {queue_state_sql('?')} = ?"
            params += [now, state]
        rows = await self._fetch(sql + " ORDER BY m.received_at, r.id LIMIT ?", [*params, limit])
        return [QueueEntry(*row) for row in rows]

    async def queued_message(self, message_id: str) -> QueuedMessage | None:
        """One message of the spool with all its recipients."""
        found = await self._fetch(
            f"SELECT {QUEUED_MESSAGE_COLUMNS} FROM messages WHERE id = ?",  # noqa: S608
            (message_id,),
        )
        if not found:
            return None
        rows = await self._fetch(
            f"SELECT {QUEUED_RECIPIENT_COLUMNS} FROM recipients"  # noqa: S608
            " WHERE message_id = ? ORDER BY id",
            (message_id,),
        )
        return queued_message_from_rows(found[0], rows)

    async def queue_summary(self, now: float) -> dict[str, tuple[int, float]]:
        """Pending recipients by queue state: how many, the oldest message's arrival."""
        rows = await self._fetch(
            f"SELECT {queue_state_sql('?')}, COUNT(*), MIN(m.received_at)"  # noqa: S608
            " FROM recipients r JOIN messages m ON m.id = r.message_id"
            " WHERE r.status = 'pending' GROUP BY 1",
            (now,),
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
