"""PostgreSQL backend (several relay nodes sharing state) through an asyncpg pool.

Claims use `FOR UPDATE SKIP LOCKED`, so concurrent workers on any node never lease the same
recipient. A `schema` query parameter in the URL selects a schema (created if missing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

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
from relay.storage.migrations import POSTGRES

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

# Any failure of the driver or the connection becomes a StoreError at this boundary.
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
_MIGRATION_LOCK = 0x6F7074696E  # an arbitrary advisory-lock key for migrations


_CONSENT_COLUMNS = (
    "account_id, address, list_id, method, subscribed_at, confirmed_at, source, ip, user_agent,"
    " consent_text_version, evidence, withdrawn_at"
)


def _split_schema(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    schema = next((value for key, value in query if key == "schema"), None)
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


class PostgresStore:
    """The `Store` on PostgreSQL."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        """Connect to `url` on `open`."""
        self.url, self.schema = _split_schema(url)
        if self.schema is not None and not self.schema.replace("_", "").isalnum():
            raise ValueError(f"invalid schema name: {self.schema!r}")
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Create the pool (and the schema, if one is named)."""
        settings = {"search_path": self.schema} if self.schema else {}
        try:
            if self.schema:
                con = await asyncpg.connect(self.url)
                try:
                    await con.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await con.close()
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self.pool_size, server_settings=settings
            )
        except _DB_ERRORS as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _acquire(self) -> AbstractAsyncContextManager[Any]:
        if self._pool is None:
            raise StoreError("the store is not open")
        return cast("AbstractAsyncContextManager[Any]", self._pool.acquire())

    async def _fetch(self, sql: str, *args: object) -> list[Any]:
        try:
            async with self._acquire() as con:
                return list(await con.fetch(sql, *args))
        except _DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def migrate(self) -> None:
        """Apply missing migrations under an advisory lock (nodes may start together)."""
        try:
            async with self._acquire() as con, con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                done = {row[0] for row in await con.fetch("SELECT version FROM schema_migrations")}
                for version, script in POSTGRES:
                    if version not in done:
                        await con.execute(script)
                        await con.execute(
                            "INSERT INTO schema_migrations (version) VALUES ($1)", version
                        )
        except _DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL migration failed: {exc}") from exc

    async def ping(self) -> None:
        """Run a trivial query."""
        await self._fetch("SELECT 1")

    async def spool(self, message: NewMessage) -> None:
        """Insert the message and its recipients in one transaction."""
        try:
            async with self._acquire() as con, con.transaction():
                await _insert_message(con, message)
        except _DB_ERRORS as exc:
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
        except _DB_ERRORS as exc:
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

    # --- suppression list ---

    async def suppress(self, entry: Suppression, *, actor: str) -> bool:
        """Add one suppression and its audit record."""
        try:
            async with self._acquire() as con, con.transaction():
                added = await _insert_suppressions(con, [entry])
                if added:
                    await _audit(
                        con,
                        AuditEntry(
                            entry.address, entry.scope, "add", entry.reason, actor, entry.created_at
                        ),
                    )
                return added == 1
        except _DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def suppress_many(self, entries: list[Suppression]) -> int:
        """Add suppressions in bulk."""
        try:
            async with self._acquire() as con, con.transaction():
                return await _insert_suppressions(con, entries)
        except _DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def unsuppress(
        self, address: str, scope: str, *, reason: str, actor: str, now: float
    ) -> bool:
        """Remove a suppression and record who did it and why."""
        address = normalize_address(address)
        try:
            async with self._acquire() as con, con.transaction():
                removed = await con.fetchval(
                    "DELETE FROM suppressions WHERE address = $1 AND scope = $2 RETURNING 1",
                    address,
                    scope,
                )
                if removed is None:
                    return False
                await _audit(con, AuditEntry(address, scope, "remove", reason, actor, now))
                return True
        except _DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def suppressed(self, address: str, account_id: str) -> Suppression | None:
        """The account's own or the global suppression of `address`."""
        rows = await self._fetch(
            "SELECT address, scope, reason, source, created_at FROM suppressions"
            " WHERE address = $1 AND scope IN ($2, $3) ORDER BY scope = $3 LIMIT 1",
            normalize_address(address),
            account_id,
            GLOBAL_SCOPE,
        )
        return Suppression(*tuple(rows[0])) if rows else None

    async def suppressions(
        self, *, scope: str | None = None, after: tuple[str, str] = ("", ""), limit: int = 1000
    ) -> list[Suppression]:
        """A page of suppressions (keyset pagination)."""
        rows = await self._fetch(
            "SELECT address, scope, reason, source, created_at FROM suppressions"
            " WHERE (address, scope) > ($1, $2) AND ($3::text IS NULL OR scope = $3)"
            " ORDER BY address, scope LIMIT $4",
            after[0],
            after[1],
            scope,
            limit,
        )
        return [Suppression(*tuple(row)) for row in rows]

    async def audit(self, address: str) -> list[AuditEntry]:
        """Changes to `address` on the suppression list."""
        rows = await self._fetch(
            "SELECT address, scope, action, reason, actor, at FROM suppression_audit"
            " WHERE address = $1 ORDER BY id",
            normalize_address(address),
        )
        return [AuditEntry(*tuple(row)) for row in rows]

    # --- account lifecycle ---

    async def account_state(self, account_id: str) -> AccountState | None:
        """The account's current state."""
        rows = await self._fetch(
            "SELECT account_id, state, reason, actor, changed_at FROM account_states"
            " WHERE account_id = $1",
            account_id,
        )
        return AccountState(*tuple(rows[0])) if rows else None

    async def set_account_state(
        self, account_id: str, state: AccountStateName, *, reason: str, actor: str, now: float
    ) -> int:
        """Change the state with its audit record; purge pending mail on termination."""
        pending = (
            "SELECT r.id FROM recipients r JOIN messages m ON m.id = r.message_id"
            " WHERE m.account_id = $1 AND m.kind = 'message' AND r.status = 'pending'"
        )
        try:
            async with self._acquire() as con, con.transaction():
                await con.execute(
                    "INSERT INTO account_states (account_id, state, reason, actor, changed_at)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id) DO UPDATE SET"
                    " state = excluded.state, reason = excluded.reason, actor = excluded.actor,"
                    " changed_at = excluded.changed_at",
                    account_id,
                    state,
                    reason,
                    actor,
                    now,
                )
                await con.execute(
                    "INSERT INTO account_events (account_id, state, reason, actor, at)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    account_id,
                    state,
                    reason,
                    actor,
                    now,
                )
                if state == "terminated":
                    rows = await con.fetch(
                        "UPDATE recipients SET status = 'failed', lease = NULL, lease_until = 0,"  # noqa: S608 - constant SQL
                        f" last_reply = $2, updated_at = $3 WHERE id IN ({pending})"
                        " RETURNING id",
                        account_id,
                        PURGED_REPLY,
                        now,
                    )
                    return len(rows)
                count = await con.fetchval(f"SELECT COUNT(*) FROM ({pending}) p", account_id)  # noqa: S608
                return int(count or 0)
        except _DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def account_history(self, account_id: str) -> list[AccountState]:
        """The account's audit trail."""
        rows = await self._fetch(
            "SELECT account_id, state, reason, actor, at FROM account_events"
            " WHERE account_id = $1 ORDER BY id",
            account_id,
        )
        return [AccountState(*tuple(row)) for row in rows]

    # --- consent (opt-in records) ---

    async def record_consents(self, records: list[Consent]) -> int:
        """Upsert opt-in records."""
        try:
            async with self._acquire() as con, con.transaction():
                await con.executemany(
                    "INSERT INTO consents (" + _CONSENT_COLUMNS + ")"  # noqa: S608 - constant
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                    " ON CONFLICT (account_id, address, list_id) DO UPDATE SET"
                    " method = excluded.method, subscribed_at = excluded.subscribed_at,"
                    " confirmed_at = excluded.confirmed_at, source = excluded.source,"
                    " ip = excluded.ip, user_agent = excluded.user_agent,"
                    " consent_text_version = excluded.consent_text_version,"
                    " evidence = excluded.evidence, withdrawn_at = excluded.withdrawn_at",
                    [consent_row(record) for record in records],
                )
            return len(records)
        except _DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def consent(self, account_id: str, address: str) -> Consent | None:
        """A standing opt-in record."""
        rows = await self._fetch(
            "SELECT " + _CONSENT_COLUMNS + " FROM consents WHERE"  # noqa: S608 - constant
            " account_id = $1 AND address = $2"
            " AND withdrawn_at IS NULL ORDER BY subscribed_at DESC LIMIT 1",
            account_id,
            normalize_address(address),
        )
        return Consent(*tuple(rows[0])) if rows else None

    async def consents(
        self,
        *,
        account_id: str | None = None,
        address: str | None = None,
        after: tuple[str, str, str] = ("", "", ""),
        limit: int = 1000,
    ) -> list[Consent]:
        """A page of opt-in records."""
        rows = await self._fetch(
            "SELECT " + _CONSENT_COLUMNS + " FROM consents WHERE"  # noqa: S608 - constant
            " (account_id, address, list_id) > ($1, $2, $3)"
            " AND ($4::text IS NULL OR account_id = $4) AND ($5::text IS NULL OR address = $5)"
            " ORDER BY account_id, address, list_id LIMIT $6",
            *after,
            account_id,
            normalize_address(address) if address is not None else None,
            limit,
        )
        return [Consent(*tuple(row)) for row in rows]

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
        """Count an event in a sliding window; an advisory lock makes it atomic across nodes."""
        counted = "COUNT(DISTINCT item)" if distinct else "COUNT(*)"
        try:
            async with self._acquire() as con, con.transaction():
                if not distinct:
                    return await _bucket_add(
                        con, account_id, kind, 1, now=now, window=window, limit=limit
                    )
                await con.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", f"{account_id}/{kind}"
                )
                await con.execute(
                    "DELETE FROM window_events WHERE account_id = $1 AND kind = $2 AND at <= $3",
                    account_id,
                    kind,
                    now - window,
                )
                row = await con.fetchrow(
                    f"SELECT {counted}, COUNT(*) FILTER (WHERE item = $3) FROM window_events"  # noqa: S608 - constant
                    " WHERE account_id = $1 AND kind = $2",
                    account_id,
                    kind,
                    item,
                )
                count, seen = (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)
                if distinct and seen:
                    return True, count
                if limit is not None and count >= limit:
                    return False, count
                await con.execute(
                    "INSERT INTO window_events (account_id, kind, item, at)"
                    " VALUES ($1, $2, $3, $4)",
                    account_id,
                    kind,
                    item,
                    now,
                )
                return True, count + 1
        except _DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    # --- campaigns and account flags ---

    async def record_campaign(
        self, account_id: str, campaign: str, recipients: int, *, now: float, window: float
    ) -> int:
        """Add a campaign's recipients; return its total over the window."""
        try:
            async with self._acquire() as con, con.transaction():
                _, total = await _bucket_add(
                    con, account_id, f"campaign:{campaign}", recipients, now=now, window=window
                )
                return total
        except _DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def set_flag(self, account_id: str, flag: str, *, reason: str, now: float) -> bool:
        """Set an account flag once."""
        rows = await self._fetch(
            "INSERT INTO account_flags (account_id, flag, reason, set_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            account_id,
            flag,
            reason,
            now,
        )
        return bool(rows)

    async def has_flag(self, account_id: str, flag: str) -> bool:
        """Whether the flag is set."""
        rows = await self._fetch(
            "SELECT 1 FROM account_flags WHERE account_id = $1 AND flag = $2", account_id, flag
        )
        return bool(rows)


async def _bucket_add(
    con: asyncpg.Connection,
    account_id: str,
    kind: str,
    amount: int,
    *,
    now: float,
    window: float,
    limit: int | None = None,
) -> tuple[bool, int]:
    """Add to a windowed counter in one-minute buckets, under an advisory lock for the key."""
    await con.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{account_id}/{kind}")
    await con.execute(
        "DELETE FROM window_counts WHERE account_id = $1 AND kind = $2 AND bucket <= $3",
        account_id,
        kind,
        now - window - BUCKET,  # only buckets wholly outside the window
    )
    total = int(
        await con.fetchval(
            "SELECT COALESCE(SUM(count), 0) FROM window_counts WHERE account_id = $1 AND kind = $2",
            account_id,
            kind,
        )
    )
    if limit is not None and total + amount > limit:
        return False, total
    await con.execute(
        "INSERT INTO window_counts (account_id, kind, bucket, count) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (account_id, kind, bucket) DO UPDATE"
        " SET count = window_counts.count + excluded.count",
        account_id,
        kind,
        now - now % BUCKET,
        amount,
    )
    return True, total + amount


async def _insert_suppressions(con: asyncpg.Connection, entries: list[Suppression]) -> int:
    rows = await con.fetch(
        "INSERT INTO suppressions (address, scope, reason, source, created_at)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
        " $5::double precision[]) ON CONFLICT DO NOTHING RETURNING 1",
        [normalize_address(e.address) for e in entries],
        [e.scope for e in entries],
        [e.reason for e in entries],
        [e.source for e in entries],
        [e.created_at for e in entries],
    )
    return len(rows)


async def _audit(con: asyncpg.Connection, entry: AuditEntry) -> None:
    await con.execute(
        "INSERT INTO suppression_audit (address, scope, action, reason, actor, at)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        normalize_address(entry.address),
        entry.scope,
        entry.action,
        entry.reason,
        entry.actor,
        entry.at,
    )


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
