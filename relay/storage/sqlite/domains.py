"""SQLite backend: what DNS proved about the accounts' sending domains."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.storage.domainchecks import DOMAIN_CHECK_COLUMNS, DomainCheck
from relay.storage.sqlite.core import SqliteCore

if TYPE_CHECKING:
    import sqlite3


class SqliteDomains(SqliteCore):
    """The sending domains part of `SqliteStore`."""

    async def save_domain_check(self, check: DomainCheck) -> DomainCheck:
        """Keep `check` after the one kept before it (in one write)."""

        def operation(db: sqlite3.Connection) -> DomainCheck:
            row = db.execute(
                f"SELECT {DOMAIN_CHECK_COLUMNS} FROM domain_checks"  # noqa: S608 - column names
                " WHERE account_id = ? AND domain = ?",
                (check.account_id, check.domain),
            ).fetchone()
            kept = check.after(DomainCheck.from_row(tuple(row)) if row else None)
            db.execute(
                f"INSERT OR REPLACE INTO domain_checks ({DOMAIN_CHECK_COLUMNS})"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                kept.row(),
            )
            return kept

        return await self._write(operation)

    async def domain_checks(self, account_id: str | None = None) -> list[DomainCheck]:
        """The checks kept, of one account or of all."""
        where, args = ("WHERE account_id = ?", (account_id,)) if account_id else ("", ())
        rows = await self._fetch(
            f"SELECT {DOMAIN_CHECK_COLUMNS} FROM domain_checks {where}"  # noqa: S608
            " ORDER BY account_id, domain",
            args,
        )
        return [DomainCheck.from_row(tuple(row)) for row in rows]
