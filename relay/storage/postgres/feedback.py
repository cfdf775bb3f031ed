"""PostgreSQL backend: feedback attribution, complaint cases and account statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.errors import StoreError
from relay.storage.events import case_decided_events, case_opened_events
from relay.storage.postgres.core import DB_ERRORS, PostgresCore
from relay.storage.postgres.events import insert_events
from relay.storage.records import (
    STAT_BUCKET,
    Case,
    CaseChange,
    CaseEvent,
    CaseStatus,
    SentRecipient,
    by_day,
    case_from_row,
    case_row,
)
from relay.storage.sql import CASE_COLUMNS, SENT_SQL

if TYPE_CHECKING:
    import asyncpg


async def _event(con: asyncpg.Connection, event: CaseEvent) -> None:
    await con.execute(
        "INSERT INTO case_events (case_id, action, status, detail, actor, at)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        event.case_id,
        event.action,
        event.status,
        event.detail,
        event.actor,
        event.at,
    )


def _conditions(**given: object) -> tuple[str, list[object]]:
    """A WHERE clause for the given (not None) columns: equality, or `>=` for times."""
    clauses: list[str] = []
    params: list[object] = []
    for column, value in given.items():
        if value is not None:
            params.append(value)
            operator = ">=" if column in ("bucket", "opened_at") else "="
            clauses.append(f"{column} {operator} ${len(params)}")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


class PostgresFeedback(PostgresCore):
    """The feedback part of `PostgresStore`."""

    async def sent(self, recipient_id: int) -> SentRecipient | None:
        """The spooled recipient with this id."""
        rows = await self._fetch(f"{SENT_SQL} WHERE r.id = $1", recipient_id)
        return SentRecipient(*tuple(rows[0])) if rows else None

    async def sent_in_message(self, message_id: str) -> list[SentRecipient]:
        """Every recipient of one spooled message."""
        rows = await self._fetch(f"{SENT_SQL} WHERE r.message_id = $1 ORDER BY r.id", message_id)
        return [SentRecipient(*tuple(row)) for row in rows]

    async def open_case(self, case: Case) -> bool:
        """Insert the case and its first event, unless it is a duplicate."""
        values = case_row(case)
        marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        try:
            async with self._acquire() as con, con.transaction():
                inserted = await con.fetchval(
                    f"INSERT INTO cases ({CASE_COLUMNS}) VALUES ({marks})"  # noqa: S608 - constant SQL
                    " ON CONFLICT DO NOTHING RETURNING 1",
                    *values,
                )
                if inserted is None:
                    return False
                detail = f"{case.feedback_type} report via {case.source}"
                event = CaseEvent(case.id, "open", case.status, detail, case.source, case.opened_at)
                await _event(con, event)
                await insert_events(con, case_opened_events(case))
                return True
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def case(self, case_id: str) -> Case | None:
        """One case."""
        rows = await self._fetch(f"SELECT {CASE_COLUMNS} FROM cases WHERE id = $1", case_id)  # noqa: S608
        return case_from_row(rows[0]) if rows else None

    async def case_events(self, case_id: str) -> list[CaseEvent]:
        """The case's history."""
        rows = await self._fetch(
            "SELECT case_id, action, status, detail, actor, at FROM case_events"
            " WHERE case_id = $1 ORDER BY id",
            case_id,
        )
        return [CaseEvent(*tuple(row)) for row in rows]

    async def cases(
        self,
        *,
        account_id: str | None = None,
        status: CaseStatus | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[Case]:
        """Cases, newest first."""
        where, params = _conditions(account_id=account_id, status=status, opened_at=since)
        rows = await self._fetch(
            f"SELECT {CASE_COLUMNS} FROM cases{where}"  # noqa: S608 - constant columns
            f" ORDER BY opened_at DESC, id DESC LIMIT ${len(params) + 1}",
            *params,
            limit,
        )
        return [case_from_row(row) for row in rows]

    async def change_case(
        self, case_id: str, change: CaseChange, *, expect: tuple[CaseStatus, ...], now: float
    ) -> bool:
        """Compare-and-set the case's status, with the change's fields and an event."""
        try:
            async with self._acquire() as con, con.transaction():
                changed = await con.fetchval(
                    "UPDATE cases SET status = $1, updated_at = $2,"
                    " resolution = COALESCE($3, resolution),"
                    " fine_cents = COALESCE($4, fine_cents),"
                    " proof = COALESCE($5, proof), evidence = COALESCE($6, evidence),"
                    " appealed_at = CASE WHEN $7 THEN $2 ELSE appealed_at END,"
                    " resolved_at = CASE WHEN $8 THEN $2 ELSE resolved_at END"
                    " WHERE id = $9 AND status = ANY($10::text[]) RETURNING 1",
                    change.status,
                    now,
                    change.resolution,
                    change.fine_cents,
                    change.proof,
                    change.evidence,
                    change.appealed,
                    change.resolved,
                    case_id,
                    list(expect),
                )
                if changed is None:
                    return False
                event = CaseEvent(
                    case_id, change.action, change.status, change.detail, change.actor, now
                )
                await _event(con, event)
                row = await con.fetchrow(
                    "SELECT account_id, recipient, message_id FROM cases WHERE id = $1", case_id
                )
                await insert_events(
                    con,
                    case_decided_events(case_id, None if row is None else tuple(row), change, now),
                )
                return True
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def due_cases(self, now: float) -> list[Case]:
        """Cases whose deadline passed without proof or appeal."""
        rows = await self._fetch(
            f"SELECT {CASE_COLUMNS} FROM cases WHERE status = 'awaiting_proof'"  # noqa: S608
            " AND deadline <= $1 AND appealed_at IS NULL ORDER BY deadline",
            now,
        )
        return [case_from_row(row) for row in rows]

    async def add_stats(self, rows: list[tuple[str, str, float, int]]) -> None:
        """Add counts to hourly buckets."""
        if not rows:
            return
        try:
            async with self._acquire() as con:
                await con.executemany(
                    "INSERT INTO account_stats (account_id, kind, bucket, count)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (account_id, kind, bucket) DO UPDATE"
                    " SET count = account_stats.count + excluded.count",
                    [(a, k, at - at % STAT_BUCKET, n) for a, k, at, n in rows],
                )
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def stats_by_day(
        self, *, since: float, account_id: str | None = None
    ) -> dict[str, dict[float, dict[str, int]]]:
        """Sums per account, day and kind since `since`."""
        where, params = _conditions(account_id=account_id, bucket=since - since % STAT_BUCKET)
        rows = await self._fetch(
            "SELECT account_id, floor(bucket / 86400) * 86400 AS day, kind,"  # noqa: S608
            f" SUM(count) FROM account_stats{where} GROUP BY account_id, day, kind",
            *params,
        )
        return by_day(rows)

    async def stats(
        self, *, since: float, account_id: str | None = None
    ) -> dict[str, dict[str, int]]:
        """Sums per account and kind since `since` (whole hourly buckets)."""
        where, params = _conditions(account_id=account_id, bucket=since - since % STAT_BUCKET)
        rows = await self._fetch(
            f"SELECT account_id, kind, SUM(count) FROM account_stats{where}"  # noqa: S608
            " GROUP BY account_id, kind",
            *params,
        )
        result: dict[str, dict[str, int]] = {}
        for account, kind, total in rows:
            result.setdefault(account, {})[kind] = int(total)
        return result
