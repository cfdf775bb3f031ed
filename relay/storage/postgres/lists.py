"""PostgreSQL backend: the suppression list (with its audit trail) and opt-in records."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.errors import StoreError
from relay.storage.events import suppression_events, unsuppression_events
from relay.storage.postgres.core import DB_ERRORS, PostgresCore
from relay.storage.postgres.events import insert_events
from relay.storage.records import (
    GLOBAL_SCOPE,
    AuditEntry,
    Consent,
    Suppression,
    consent_row,
    normalize_address,
    suppression_key,
)
from relay.storage.sql import CONSENT_COLUMNS, CONSENT_UPSERT

if TYPE_CHECKING:
    import asyncpg


async def _insert_suppressions(con: asyncpg.Connection, entries: list[Suppression]) -> int:
    rows = await con.fetch(
        "INSERT INTO suppressions (address, scope, reason, source, created_at, match_key)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
        " $5::double precision[], $6::text[]) ON CONFLICT DO NOTHING RETURNING 1",
        [normalize_address(e.address) for e in entries],
        [e.scope for e in entries],
        [e.reason for e in entries],
        [e.source for e in entries],
        [e.created_at for e in entries],
        [suppression_key(e.address) for e in entries],
    )
    return len(rows)


async def insert_audit(con: asyncpg.Connection, entry: AuditEntry) -> None:
    """Record one change to the suppression list in its audit trail."""
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


class PostgresLists(PostgresCore):
    """The lists part of `PostgresStore`."""

    async def suppress(
        self,
        entry: Suppression,
        *,
        actor: str,
        account_id: str | None = None,
        details: dict[str, str] | None = None,
    ) -> bool:
        """Add one suppression and its audit record."""
        try:
            async with self._acquire() as con, con.transaction():
                added = await _insert_suppressions(con, [entry])
                if added:
                    await insert_audit(
                        con,
                        AuditEntry(
                            entry.address, entry.scope, "add", entry.reason, actor, entry.created_at
                        ),
                    )
                    await insert_events(con, suppression_events(entry, actor, account_id, details))
                return added == 1
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def suppress_many(self, entries: list[Suppression]) -> int:
        """Add suppressions in bulk."""
        try:
            async with self._acquire() as con, con.transaction():
                return await _insert_suppressions(con, entries)
        except DB_ERRORS as exc:
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
                await insert_audit(con, AuditEntry(address, scope, "remove", reason, actor, now))
                await insert_events(
                    con, unsuppression_events(address, scope, reason=reason, actor=actor, now=now)
                )
                return True
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def suppressed(self, address: str, account_id: str) -> Suppression | None:
        """The account's own or the global suppression of `address`."""
        rows = await self._fetch(
            "SELECT address, scope, reason, source, created_at FROM suppressions"
            " WHERE match_key IN ($1, $4) AND scope IN ($2, $3) ORDER BY scope = $3 LIMIT 1",
            suppression_key(address),
            account_id,
            GLOBAL_SCOPE,
            normalize_address(address),
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

    async def record_consents(self, records: list[Consent]) -> int:
        """Upsert opt-in records."""
        try:
            async with self._acquire() as con, con.transaction():
                await con.executemany(
                    "INSERT INTO consents (" + CONSENT_COLUMNS + ")"  # noqa: S608 - constant
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                    + CONSENT_UPSERT,
                    [consent_row(record) for record in records],
                )
            return len(records)
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def consent(self, account_id: str, address: str) -> Consent | None:
        """A standing opt-in record."""
        rows = await self._fetch(
            "SELECT " + CONSENT_COLUMNS + " FROM consents WHERE"  # noqa: S608 - constant
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
            "SELECT " + CONSENT_COLUMNS + " FROM consents WHERE"  # noqa: S608 - constant
            " (account_id, address, list_id) > ($1, $2, $3)"
            " AND ($4::text IS NULL OR account_id = $4) AND ($5::text IS NULL OR address = $5)"
            " ORDER BY account_id, address, list_id LIMIT $6",
            *after,
            account_id,
            normalize_address(address) if address is not None else None,
            limit,
        )
        return [Consent(*tuple(row)) for row in rows]
