"""SQLite backend (the embedded default): aiosqlite, WAL, synchronous=FULL.

One connection writes; a second, read-only one serves reads, which WAL never makes wait.

Writes use group commit: concurrent writers queue their operation, and one writer task runs
every queued operation in a single transaction (each in its own savepoint, so one failing
operation fails alone), then answers each caller only after COMMIT has returned. One fsync then
covers many messages. `BEGIN IMMEDIATE` also serialises writers across processes sharing a file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite

from relay.errors import StoreError
from relay.storage.base import (
    BUCKET,
    GLOBAL_SCOPE,
    PURGED_REPLY,
    AccountState,
    AccountStateName,
    AuditEntry,
    Consent,
    DeliveryJob,
    NewMessage,
    QueueEntry,
    Suppression,
    consent_row,
    normalize_address,
)
from relay.storage.migrations import SQLITE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

T = TypeVar("T")
_GROUP_LIMIT = 256  # operations per transaction


@dataclass(frozen=True)
class _Failed:
    """An operation of a group that failed (and was rolled back to its savepoint)."""

    error: Exception


_CONSENT_COLUMNS = (
    "account_id, address, list_id, method, subscribed_at, confirmed_at, source, ip, user_agent,"
    " consent_text_version, evidence, withdrawn_at"
)


class SqliteStore:
    """The `Store` on a SQLite file."""

    def __init__(self, path: str) -> None:
        """Use the database file at `path` (created on `open`)."""
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._queue: list[
            tuple[Callable[[aiosqlite.Connection], Awaitable[Any]], asyncio.Future[Any]]
        ] = []
        self._writer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Open the file (creating its folder) and set durable pragmas."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc.strerror}") from exc
        pending = aiosqlite.connect(self.path, isolation_level=None)
        db: aiosqlite.Connection | None = None
        try:
            db = await pending
            for pragma in (
                "PRAGMA journal_mode=WAL",
                "PRAGMA synchronous=FULL",
                "PRAGMA foreign_keys=ON",
                "PRAGMA busy_timeout=10000",
            ):
                await db.execute(pragma)
        except (OSError, sqlite3.Error) as exc:
            if db is not None:
                await db.close()
            else:
                # aiosqlite stops its worker thread after a failed connect without waiting;
                # wait here, so the thread never reports to an event loop that has closed.
                await asyncio.to_thread(pending._thread.join, 5)  # noqa: SLF001
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._db = db
        try:
            # Reads use a second connection: in WAL mode they never wait for a writer.
            reader = await aiosqlite.connect(self.path, isolation_level=None)
            await reader.execute("PRAGMA busy_timeout=10000")
            await reader.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._reader = reader

    async def close(self) -> None:
        """Finish queued writes, then close the connection."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._db is None:
            raise StoreError("the store is not open")
        async with self._lock:
            db = self._db
            try:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    await db.execute("ROLLBACK")
                    raise
                await db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite: {exc}") from exc

    async def _write(self, operation: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run `operation` in the next group transaction; return once it is committed."""
        if self._db is None:
            raise StoreError("the store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((operation, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:_GROUP_LIMIT], self._queue[_GROUP_LIMIT:]
            try:
                outcomes = await self._commit_group([operation for operation, _ in batch])
            except StoreError as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # the caller gave up waiting; the write stands
                    continue
                if isinstance(outcome, _Failed):
                    future.set_exception(outcome.error)
                else:
                    future.set_result(outcome)

    async def _commit_group(
        self, operations: list[Callable[[aiosqlite.Connection], Awaitable[Any]]]
    ) -> list[Any]:
        """Run `operations` in one transaction, each in a savepoint; raise if COMMIT fails."""
        async with self._lock:
            db = self._db
            if db is None:
                raise StoreError("the store is not open")
            outcomes: list[Any] = []
            try:
                await db.execute("BEGIN IMMEDIATE")
                for operation in operations:
                    await db.execute("SAVEPOINT operation")
                    try:
                        outcomes.append(await operation(db))
                    except sqlite3.Error as exc:
                        await db.execute("ROLLBACK TO operation")
                        outcomes.append(_Failed(StoreError(f"SQLite: {exc}")))
                    except Exception as exc:  # noqa: BLE001 - a bug in one operation fails it alone
                        await db.execute("ROLLBACK TO operation")
                        outcomes.append(_Failed(exc))
                    await db.execute("RELEASE operation")
                await db.execute("COMMIT")
            except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite after close
                with suppress(sqlite3.Error, ValueError):
                    await db.execute("ROLLBACK")
                raise StoreError(f"SQLite: {exc}") from exc
            return outcomes

    async def _fetch(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        if self._reader is None:
            raise StoreError("the store is not open")
        try:
            async with self._reader.execute(sql, tuple(params)) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc

    async def migrate(self) -> None:
        """Apply every migration not yet applied."""
        async with self._tx() as db:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            async with db.execute("SELECT version FROM schema_migrations") as cursor:
                done = {row[0] for row in await cursor.fetchall()}
            for version, script in SQLITE:
                if version in done:
                    continue
                for statement in _statements(script):
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))

    async def ping(self) -> None:
        """Run a trivial query."""
        await self._fetch("SELECT 1")

    async def spool(self, message: NewMessage) -> None:
        """Insert the message and its recipients; return once committed (durable)."""

        async def operation(db: aiosqlite.Connection) -> None:
            await _insert_message(db, message)

        await self._write(operation)

    async def claim(
        self, *, lease: str, now: float, lease_until: float, limit: int
    ) -> list[DeliveryJob]:
        """Lease due recipients whose earlier lease (if any) has run out."""

        async def operation(db: aiosqlite.Connection) -> list[Any]:
            # Mail of a suspended or terminated account is held: never claimed.
            await db.execute(
                "UPDATE recipients SET lease = ?, lease_until = ? WHERE id IN ("
                " SELECT r.id FROM recipients r JOIN messages m ON m.id = r.message_id"
                " WHERE r.status = 'pending' AND r.next_attempt <= ? AND r.lease_until <= ?"
                " AND NOT (m.kind = 'message' AND EXISTS (SELECT 1 FROM account_states s"
                " WHERE s.account_id = m.account_id AND s.state <> 'active'))"
                " ORDER BY r.next_attempt LIMIT ?)",
                (lease, lease_until, now, now, limit),
            )
            async with db.execute(
                "SELECT r.id, r.message_id, r.rcpt, r.attempts, m.account_id, m.mail_from,"
                " m.received_at, m.kind, m.campaign FROM recipients r"
                " JOIN messages m ON m.id = r.message_id"
                " WHERE r.lease = ? AND r.status = 'pending' ORDER BY r.id",
                (lease,),
            ) as cursor:
                return list(await cursor.fetchall())

        rows = await self._write(operation)
        return [
            DeliveryJob(*row[:8], lease=lease, campaign=row[8])  # type: ignore[misc]
            for row in rows
        ]

    async def content(self, message_id: str) -> bytes:
        """Return the spooled bytes of `message_id`."""
        rows = await self._fetch("SELECT content FROM messages WHERE id = ?", (message_id,))
        if not rows or rows[0][0] is None:
            raise StoreError(f"no spooled content for message {message_id}")
        return bytes(rows[0][0])

    async def delivered(self, job: DeliveryJob, *, reply: str, now: float) -> bool:
        """Mark `job` delivered."""
        return await self._write(lambda db: _finish(db, job, "delivered", reply, now))

    async def deferred(
        self, job: DeliveryJob, *, reply: str, now: float, next_attempt: float
    ) -> bool:
        """Count the attempt and schedule the next."""

        async def operation(db: aiosqlite.Connection) -> bool:
            cursor = await db.execute(
                "UPDATE recipients SET attempts = attempts + 1, next_attempt = ?, lease = NULL,"
                " lease_until = 0, last_reply = ?, updated_at = ? WHERE id = ? AND lease = ?"
                " AND status = 'pending'",
                (next_attempt, reply, now, job.recipient_id, job.lease),
            )
            return cursor.rowcount == 1

        return await self._write(operation)

    async def failed(
        self, job: DeliveryJob, *, reply: str, now: float, dsn: NewMessage | None
    ) -> bool:
        """Mark `job` failed and spool its DSN atomically."""

        async def operation(db: aiosqlite.Connection) -> bool:
            if not await _finish(db, job, "failed", reply, now):
                return False
            if dsn is not None:
                await _insert_message(db, dsn)
            return True

        return await self._write(operation)

    async def renew(self, lease: str, *, lease_until: float) -> int:
        """Extend a lease held by deliveries in flight."""

        async def operation(db: aiosqlite.Connection) -> int:
            cursor = await db.execute(
                "UPDATE recipients SET lease_until = ? WHERE lease = ? AND status = 'pending'",
                (lease_until, lease),
            )
            return cursor.rowcount

        return await self._write(operation)

    async def release(self, lease_prefix: str) -> int:
        """Give back leases held by this process."""

        async def operation(db: aiosqlite.Connection) -> int:
            cursor = await db.execute(
                "UPDATE recipients SET lease = NULL, lease_until = 0"
                " WHERE lease LIKE ? AND status = 'pending'",
                (lease_prefix.replace("%", "") + "%",),
            )
            return cursor.rowcount

        return await self._write(operation)

    async def queue(self, limit: int = 1000) -> list[QueueEntry]:
        """Recipients still pending, oldest first."""
        rows = await self._fetch(
            "SELECT r.message_id, r.rcpt, m.account_id, m.mail_from, r.attempts, r.next_attempt,"
            " r.last_reply FROM recipients r JOIN messages m ON m.id = r.message_id"
            " WHERE r.status = 'pending' ORDER BY m.received_at, r.id LIMIT ?",
            (limit,),
        )
        return [QueueEntry(*row) for row in rows]

    async def counts(self) -> dict[str, int]:
        """Recipients per state."""
        rows = await self._fetch("SELECT status, COUNT(*) FROM recipients GROUP BY status")
        return {row[0]: row[1] for row in rows}

    # --- suppression list ---

    async def suppress(self, entry: Suppression, *, actor: str) -> bool:
        """Add one suppression and its audit record."""

        async def operation(db: aiosqlite.Connection) -> bool:
            added = await _insert_suppressions(db, [entry])
            if added:
                audit = AuditEntry(
                    entry.address, entry.scope, "add", entry.reason, actor, entry.created_at
                )
                await _audit(db, audit)
            return added == 1

        return await self._write(operation)

    async def suppress_many(self, entries: list[Suppression]) -> int:
        """Add suppressions in bulk."""
        return await self._write(lambda db: _insert_suppressions(db, entries))

    async def unsuppress(
        self, address: str, scope: str, *, reason: str, actor: str, now: float
    ) -> bool:
        """Remove a suppression and record who did it and why."""
        address = normalize_address(address)

        async def operation(db: aiosqlite.Connection) -> bool:
            cursor = await db.execute(
                "DELETE FROM suppressions WHERE address = ? AND scope = ?", (address, scope)
            )
            if cursor.rowcount != 1:
                return False
            await _audit(db, AuditEntry(address, scope, "remove", reason, actor, now))
            return True

        return await self._write(operation)

    async def suppressed(self, address: str, account_id: str) -> Suppression | None:
        """The account's own or the global suppression of `address`."""
        rows = await self._fetch(
            "SELECT address, scope, reason, source, created_at FROM suppressions"
            " WHERE address = ? AND scope IN (?, ?) ORDER BY scope = ? LIMIT 1",
            (normalize_address(address), account_id, GLOBAL_SCOPE, GLOBAL_SCOPE),
        )
        return Suppression(*rows[0]) if rows else None

    async def suppressions(
        self, *, scope: str | None = None, after: tuple[str, str] = ("", ""), limit: int = 1000
    ) -> list[Suppression]:
        """A page of suppressions (keyset pagination)."""
        sql = (
            "SELECT address, scope, reason, source, created_at FROM suppressions"
            " WHERE (address, scope) > (?, ?)"
        )
        params: list[object] = [after[0], after[1]]
        if scope is not None:
            sql += " AND scope = ?"
            params.append(scope)
        rows = await self._fetch(sql + " ORDER BY address, scope LIMIT ?", [*params, limit])
        return [Suppression(*row) for row in rows]

    async def audit(self, address: str) -> list[AuditEntry]:
        """Changes to `address` on the suppression list."""
        rows = await self._fetch(
            "SELECT address, scope, action, reason, actor, at FROM suppression_audit"
            " WHERE address = ? ORDER BY id",
            (normalize_address(address),),
        )
        return [AuditEntry(*row) for row in rows]

    # --- account lifecycle ---

    async def account_state(self, account_id: str) -> AccountState | None:
        """The account's current state."""
        rows = await self._fetch(
            "SELECT account_id, state, reason, actor, changed_at FROM account_states"
            " WHERE account_id = ?",
            (account_id,),
        )
        return AccountState(*rows[0]) if rows else None

    async def set_account_state(
        self, account_id: str, state: AccountStateName, *, reason: str, actor: str, now: float
    ) -> int:
        """Change the state with its audit record; purge pending mail on termination."""

        async def operation(db: aiosqlite.Connection) -> int:
            await db.execute(
                "INSERT INTO account_states (account_id, state, reason, actor, changed_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET"
                " state = excluded.state, reason = excluded.reason, actor = excluded.actor,"
                " changed_at = excluded.changed_at",
                (account_id, state, reason, actor, now),
            )
            await db.execute(
                "INSERT INTO account_events (account_id, state, reason, actor, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (account_id, state, reason, actor, now),
            )
            pending = (
                "SELECT r.id FROM recipients r JOIN messages m ON m.id = r.message_id"
                " WHERE m.account_id = ? AND m.kind = 'message' AND r.status = 'pending'"
            )
            if state == "terminated":
                cursor = await db.execute(
                    "UPDATE recipients SET status = 'failed', lease = NULL, lease_until = 0,"  # noqa: S608 - constant SQL
                    f" last_reply = ?, updated_at = ? WHERE id IN ({pending})",
                    (PURGED_REPLY, now, account_id),
                )
                return cursor.rowcount
            async with db.execute(f"SELECT COUNT(*) FROM ({pending})", (account_id,)) as cursor:  # noqa: S608
                row = await cursor.fetchone()
            return int(row[0]) if row else 0

        return await self._write(operation)

    async def account_history(self, account_id: str) -> list[AccountState]:
        """The account's audit trail."""
        rows = await self._fetch(
            "SELECT account_id, state, reason, actor, at FROM account_events"
            " WHERE account_id = ? ORDER BY id",
            (account_id,),
        )
        return [AccountState(*row) for row in rows]

    # --- consent (opt-in records) ---

    async def record_consents(self, records: list[Consent]) -> int:
        """Upsert opt-in records."""

        async def operation(db: aiosqlite.Connection) -> int:
            await db.executemany(
                "INSERT INTO consents (" + _CONSENT_COLUMNS + ")"  # noqa: S608 - constant
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (account_id, address, list_id) DO UPDATE SET"
                " method = excluded.method, subscribed_at = excluded.subscribed_at,"
                " confirmed_at = excluded.confirmed_at, source = excluded.source,"
                " ip = excluded.ip, user_agent = excluded.user_agent,"
                " consent_text_version = excluded.consent_text_version,"
                " evidence = excluded.evidence, withdrawn_at = excluded.withdrawn_at",
                [consent_row(record) for record in records],
            )
            return len(records)

        return await self._write(operation)

    async def consent(self, account_id: str, address: str) -> Consent | None:
        """A standing opt-in record."""
        rows = await self._fetch(
            "SELECT " + _CONSENT_COLUMNS + " FROM consents WHERE"  # noqa: S608 - constant
            " account_id = ? AND address = ?"
            " AND withdrawn_at IS NULL ORDER BY subscribed_at DESC LIMIT 1",
            (account_id, normalize_address(address)),
        )
        return Consent(*rows[0]) if rows else None

    async def consents(
        self,
        *,
        account_id: str | None = None,
        address: str | None = None,
        after: tuple[str, str, str] = ("", "", ""),
        limit: int = 1000,
    ) -> list[Consent]:
        """A page of opt-in records."""
        sql = (
            "SELECT " + _CONSENT_COLUMNS + " FROM consents"  # noqa: S608 - constant
            " WHERE (account_id, address, list_id) > (?, ?, ?)"
        )
        params: list[object] = list(after)
        if account_id is not None:
            sql += " AND account_id = ?"
            params.append(account_id)
        if address is not None:
            sql += " AND address = ?"
            params.append(normalize_address(address))
        rows = await self._fetch(
            sql + " ORDER BY account_id, address, list_id LIMIT ?", [*params, limit]
        )
        return [Consent(*row) for row in rows]

    # --- sliding windows ---

    async def window_take(
        self,
        account_id: str,
        kind: str,
        item: str,
        *,
        now: float,
        window: float,
        limit: int | None = None,
        distinct: bool = False,
    ) -> tuple[bool, int]:
        """Count an event in a sliding window (BEGIN IMMEDIATE makes it atomic)."""

        async def operation(db: aiosqlite.Connection) -> tuple[bool, int]:
            if not distinct:
                return await _bucket_add(
                    db, account_id, kind, 1, now=now, window=window, limit=limit
                )
            await db.execute(
                "DELETE FROM window_events WHERE account_id = ? AND kind = ? AND at <= ?",
                (account_id, kind, now - window),
            )
            counted = "COUNT(DISTINCT item)" if distinct else "COUNT(*)"
            async with db.execute(
                f"SELECT {counted}, SUM(item = ?) FROM window_events"  # noqa: S608 - constant
                " WHERE account_id = ? AND kind = ?",
                (item, account_id, kind),
            ) as cursor:
                row = await cursor.fetchone()
            count, seen = (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)
            if distinct and seen:
                return True, count
            if limit is not None and count >= limit:
                return False, count
            await db.execute(
                "INSERT INTO window_events (account_id, kind, item, at) VALUES (?, ?, ?, ?)",
                (account_id, kind, item, now),
            )
            return True, count + 1

        return await self._write(operation)

    # --- campaigns and account flags ---

    async def record_campaign(
        self, account_id: str, campaign: str, recipients: int, *, now: float, window: float
    ) -> int:
        """Add a campaign's recipients; return its total over the window."""

        async def operation(db: aiosqlite.Connection) -> int:
            _, total = await _bucket_add(
                db, account_id, f"campaign:{campaign}", recipients, now=now, window=window
            )
            return total

        return await self._write(operation)

    async def set_flag(self, account_id: str, flag: str, *, reason: str, now: float) -> bool:
        """Set an account flag once."""

        async def operation(db: aiosqlite.Connection) -> bool:
            cursor = await db.execute(
                "INSERT INTO account_flags (account_id, flag, reason, set_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (account_id, flag, reason, now),
            )
            return cursor.rowcount == 1

        return await self._write(operation)

    async def has_flag(self, account_id: str, flag: str) -> bool:
        """Whether the flag is set."""
        rows = await self._fetch(
            "SELECT 1 FROM account_flags WHERE account_id = ? AND flag = ?", (account_id, flag)
        )
        return bool(rows)


async def _insert_suppressions(db: aiosqlite.Connection, entries: list[Suppression]) -> int:
    before = db.total_changes
    await db.executemany(
        "INSERT INTO suppressions (address, scope, reason, source, created_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [
            (normalize_address(e.address), e.scope, e.reason, e.source, e.created_at)
            for e in entries
        ],
    )
    return db.total_changes - before


async def _audit(db: aiosqlite.Connection, entry: AuditEntry) -> None:
    await db.execute(
        "INSERT INTO suppression_audit (address, scope, action, reason, actor, at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            normalize_address(entry.address),
            entry.scope,
            entry.action,
            entry.reason,
            entry.actor,
            entry.at,
        ),
    )


async def _bucket_add(
    db: aiosqlite.Connection,
    account_id: str,
    kind: str,
    amount: int,
    *,
    now: float,
    window: float,
    limit: int | None = None,
) -> tuple[bool, int]:
    """Add `amount` to a windowed counter kept in one-minute buckets (bounded work per call)."""
    await db.execute(
        "DELETE FROM window_counts WHERE account_id = ? AND kind = ? AND bucket <= ?",
        (account_id, kind, now - window - BUCKET),  # only buckets wholly outside the window
    )
    async with db.execute(
        "SELECT COALESCE(SUM(count), 0) FROM window_counts WHERE account_id = ? AND kind = ?",
        (account_id, kind),
    ) as cursor:
        row = await cursor.fetchone()
    total = int(row[0]) if row else 0
    if limit is not None and total + amount > limit:
        return False, total
    await db.execute(
        "INSERT INTO window_counts (account_id, kind, bucket, count) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (account_id, kind, bucket) DO UPDATE SET count = count + excluded.count",
        (account_id, kind, now - now % BUCKET, amount),
    )
    return True, total + amount


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


async def _insert_message(db: aiosqlite.Connection, message: NewMessage) -> None:
    await db.execute(
        "INSERT INTO messages (id, account_id, mail_from, kind, content, size, received_at,"
        " campaign) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message.id,
            message.account_id,
            message.mail_from,
            message.kind,
            message.content,
            len(message.content),
            message.received_at,
            message.campaign,
        ),
    )
    await db.executemany(
        "INSERT INTO recipients (message_id, rcpt, next_attempt, updated_at) VALUES (?, ?, ?, ?)",
        [
            (message.id, rcpt, message.received_at, message.received_at)
            for rcpt in message.recipients
        ],
    )


async def _finish(
    db: aiosqlite.Connection, job: DeliveryJob, status: str, reply: str, now: float
) -> bool:
    cursor = await db.execute(
        "UPDATE recipients SET status = ?, attempts = attempts + 1, lease = NULL, lease_until = 0,"
        " last_reply = ?, updated_at = ? WHERE id = ? AND lease = ? AND status = 'pending'",
        (status, reply, now, job.recipient_id, job.lease),
    )
    if cursor.rowcount != 1:
        return False
    # The content is only needed while a recipient is pending; drop it once none is.
    await db.execute(
        "UPDATE messages SET content = NULL, completed_at = ? WHERE id = ? AND NOT EXISTS"
        " (SELECT 1 FROM recipients WHERE message_id = ? AND status = 'pending')",
        (now, job.message_id, job.message_id),
    )
    return True
