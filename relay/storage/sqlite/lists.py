"""SQLite backend: the suppression list (with its audit trail) and opt-in records."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.storage.events import suppression_events, unsuppression_events
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
from relay.storage.sqlite.core import SqliteCore
from relay.storage.sqlite.events import insert_events

if TYPE_CHECKING:
    import sqlite3


def _insert_suppressions(db: sqlite3.Connection, entries: list[Suppression]) -> int:
    before = db.total_changes
    db.executemany(
        "INSERT INTO suppressions (address, scope, reason, source, created_at, match_key)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [
            (
                normalize_address(e.address),
                e.scope,
                e.reason,
                e.source,
                e.created_at,
                suppression_key(e.address),
            )
            for e in entries
        ],
    )
    return db.total_changes - before


def insert_audit(db: sqlite3.Connection, entry: AuditEntry) -> None:
    """Record one change to the suppression list in its audit trail."""
    db.execute(
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


class SqliteLists(SqliteCore):
    """The lists part of `SqliteStore`."""

    async def suppress(
        self,
        entry: Suppression,
        *,
        actor: str,
        account_id: str | None = None,
        details: dict[str, str] | None = None,
    ) -> bool:
        """Add one suppression and its audit record."""

        def operation(db: sqlite3.Connection) -> bool:
            added = _insert_suppressions(db, [entry])
            if added:
                audit = AuditEntry(
                    entry.address, entry.scope, "add", entry.reason, actor, entry.created_at
                )
                insert_audit(db, audit)
                insert_events(db, suppression_events(entry, actor, account_id, details))
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

        def operation(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "DELETE FROM suppressions WHERE address = ? AND scope = ?", (address, scope)
            )
            if cursor.rowcount != 1:
                return False
            insert_audit(db, AuditEntry(address, scope, "remove", reason, actor, now))
            insert_events(
                db, unsuppression_events(address, scope, reason=reason, actor=actor, now=now)
            )
            return True

        return await self._write(operation)

    async def suppressed(self, address: str, account_id: str) -> Suppression | None:
        """The account's own or the global suppression of `address`."""
        rows = await self._lookup(
            "SELECT address, scope, reason, source, created_at FROM suppressions"
            " WHERE match_key IN (?, ?) AND scope IN (?, ?) ORDER BY scope = ? LIMIT 1",
            (
                suppression_key(address),
                normalize_address(address),
                account_id,
                GLOBAL_SCOPE,
                GLOBAL_SCOPE,
            ),
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

    async def record_consents(self, records: list[Consent]) -> int:
        """Upsert opt-in records."""

        def operation(db: sqlite3.Connection) -> int:
            db.executemany(
                "INSERT INTO consents (" + CONSENT_COLUMNS + ")"  # noqa: S608 - constant
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" + CONSENT_UPSERT,
                [consent_row(record) for record in records],
            )
            return len(records)

        return await self._write(operation)

    async def consent(self, account_id: str, address: str) -> Consent | None:
        """A standing opt-in record."""
        rows = await self._lookup(
            "SELECT " + CONSENT_COLUMNS + " FROM consents WHERE"  # noqa: S608 - constant
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
            "SELECT " + CONSENT_COLUMNS + " FROM consents"  # noqa: S608 - constant
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
