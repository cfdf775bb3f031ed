"""PostgreSQL backend: what DNS proved about the accounts' sending domains."""

from __future__ import annotations

from relay.errors import StoreError
from relay.storage.domainchecks import DOMAIN_CHECK_COLUMNS, DomainCheck
from relay.storage.postgres.core import DB_ERRORS, PostgresCore


class PostgresDomains(PostgresCore):
    """The sending domains part of `PostgresStore`."""

    async def save_domain_check(self, check: DomainCheck) -> DomainCheck:
        """Keep `check` after the one kept before it (the row locked meanwhile)."""
        try:
            async with self._acquire() as con, con.transaction():
                row = await con.fetchrow(
                    f"SELECT {DOMAIN_CHECK_COLUMNS} FROM domain_checks"  # noqa: S608 - columns
                    " WHERE account_id = $1 AND domain = $2 FOR UPDATE",
                    check.account_id,
                    check.domain,
                )
                kept = check.after(DomainCheck.from_row(tuple(row)) if row else None)
                await con.execute(
                    f"INSERT INTO domain_checks ({DOMAIN_CHECK_COLUMNS})"  # noqa: S608
                    " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (account_id, domain)"
                    " DO UPDATE SET status = excluded.status,"
                    " requirements = excluded.requirements, checked_at = excluded.checked_at,"
                    " settled = excluded.settled, settled_at = excluded.settled_at",
                    *kept.row(),
                )
                return kept
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def domain_checks(self, account_id: str | None = None) -> list[DomainCheck]:
        """The checks kept, of one account or of all."""
        where, args = ("WHERE account_id = $1", [account_id]) if account_id else ("", [])
        rows = await self._fetch(
            f"SELECT {DOMAIN_CHECK_COLUMNS} FROM domain_checks {where}"  # noqa: S608
            " ORDER BY account_id, domain",
            *args,
        )
        return [DomainCheck.from_row(tuple(row)) for row in rows]
