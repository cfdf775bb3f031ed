"""SQLite backend: feedback attribution, complaint cases and account statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.storage.events import case_decided_events, case_opened_events
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
from relay.storage.sqlite.core import SqliteCore
from relay.storage.sqlite.events import insert_events

if TYPE_CHECKING:
    import sqlite3


def _event(db: sqlite3.Connection, event: CaseEvent) -> None:
    db.execute(
        "INSERT INTO case_events (case_id, action, status, detail, actor, at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (event.case_id, event.action, event.status, event.detail, event.actor, event.at),
    )


def _conditions(**given: object) -> tuple[str, list[object]]:
    """A WHERE clause for the given (not None) columns: equality, or `>=` for times."""
    clauses, params = [], []
    for column, value in given.items():
        if value is not None:
            clauses.append(
                f"{column} >= ?" if column in ("bucket", "opened_at") else f"{column} = ?"
            )
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


class SqliteFeedback(SqliteCore):
    """The feedback part of `SqliteStore`."""

    async def sent(self, recipient_id: int) -> SentRecipient | None:
        """The spooled recipient with this id."""
        rows = await self._fetch(f"{SENT_SQL} WHERE r.id = ?", (recipient_id,))
        return SentRecipient(*rows[0]) if rows else None

    async def sent_in_message(self, message_id: str) -> list[SentRecipient]:
        """Every recipient of one spooled message."""
        rows = await self._fetch(f"{SENT_SQL} WHERE r.message_id = ? ORDER BY r.id", (message_id,))
        return [SentRecipient(*row) for row in rows]

    async def open_case(self, case: Case) -> bool:
        """Insert the case and its first event, unless it is a duplicate."""

        def operation(db: sqlite3.Connection) -> bool:
            values = case_row(case)
            before = db.total_changes
            db.execute(
                f"INSERT INTO cases ({CASE_COLUMNS}) VALUES ({', '.join('?' * len(values))})"  # noqa: S608 - constant SQL
                " ON CONFLICT DO NOTHING",
                values,
            )
            if db.total_changes == before:
                return False
            detail = f"{case.feedback_type} report via {case.source}"
            _event(db, CaseEvent(case.id, "open", case.status, detail, case.source, case.opened_at))
            insert_events(db, case_opened_events(case))
            return True

        return await self._write(operation)

    async def case(self, case_id: str) -> Case | None:
        """One case."""
        rows = await self._fetch(f"SELECT {CASE_COLUMNS} FROM cases WHERE id = ?", (case_id,))  # noqa: S608
        return case_from_row(rows[0]) if rows else None

    async def case_events(self, case_id: str) -> list[CaseEvent]:
        """The case's history."""
        rows = await self._fetch(
            "SELECT case_id, action, status, detail, actor, at FROM case_events"
            " WHERE case_id = ? ORDER BY id",
            (case_id,),
        )
        return [CaseEvent(*row) for row in rows]

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
            " ORDER BY opened_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [case_from_row(row) for row in rows]

    async def change_case(
        self, case_id: str, change: CaseChange, *, expect: tuple[CaseStatus, ...], now: float
    ) -> bool:
        """Compare-and-set the case's status, with the change's fields and an event."""

        def operation(db: sqlite3.Connection) -> bool:
            before = db.total_changes
            db.execute(
                "UPDATE cases SET status = ?, updated_at = ?,"  # noqa: S608 - constant SQL
                " resolution = COALESCE(?, resolution), fine_cents = COALESCE(?, fine_cents),"
                " proof = COALESCE(?, proof), evidence = COALESCE(?, evidence),"
                " appealed_at = CASE WHEN ? THEN ? ELSE appealed_at END,"
                " resolved_at = CASE WHEN ? THEN ? ELSE resolved_at END"
                f" WHERE id = ? AND status IN ({', '.join('?' * len(expect))})",
                (
                    change.status,
                    now,
                    change.resolution,
                    change.fine_cents,
                    change.proof,
                    change.evidence,
                    change.appealed,
                    now,
                    change.resolved,
                    now,
                    case_id,
                    *expect,
                ),
            )
            if db.total_changes == before:
                return False
            event = CaseEvent(
                case_id, change.action, change.status, change.detail, change.actor, now
            )
            _event(db, event)
            row = db.execute(
                "SELECT account_id, recipient, message_id FROM cases WHERE id = ?", (case_id,)
            ).fetchone()
            insert_events(db, case_decided_events(case_id, row, change, now))
            return True

        return await self._write(operation)

    async def due_cases(self, now: float) -> list[Case]:
        """Cases whose deadline passed without proof or appeal."""
        rows = await self._fetch(
            f"SELECT {CASE_COLUMNS} FROM cases WHERE status = 'awaiting_proof'"  # noqa: S608
            " AND deadline <= ? AND appealed_at IS NULL ORDER BY deadline",
            (now,),
        )
        return [case_from_row(row) for row in rows]

    async def add_stats(self, rows: list[tuple[str, str, float, int]]) -> None:
        """Add counts to hourly buckets."""
        if not rows:
            return

        def operation(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO account_stats (account_id, kind, bucket, count) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (account_id, kind, bucket) DO UPDATE"
                " SET count = count + excluded.count",
                [(a, k, at - at % STAT_BUCKET, n) for a, k, at, n in rows],
            )

        await self._write(operation)

    async def stats_by_day(
        self, *, since: float, account_id: str | None = None
    ) -> dict[str, dict[float, dict[str, int]]]:
        """Sums per account, day and kind since `since`."""
        where, params = _conditions(account_id=account_id, bucket=since - since % STAT_BUCKET)
        rows = await self._fetch(
            "SELECT account_id, CAST(bucket / 86400 AS INTEGER) * 86400 AS day, kind,"  # noqa: S608
            f" SUM(count) FROM account_stats{where} GROUP BY account_id, day, kind",
            params,
        )
        return by_day(rows)

    async def stats(
        self, *, since: float, account_id: str | None = None
    ) -> dict[str, dict[str, int]]:
        """Sums per account and kind since `since` (whole hourly buckets)."""
        # Conditions only for what is asked: `? IS NULL OR ...` would keep SQLite off the index.
        where, params = _conditions(account_id=account_id, bucket=since - since % STAT_BUCKET)
        rows = await self._fetch(
            f"SELECT account_id, kind, SUM(count) FROM account_stats{where}"  # noqa: S608
            " GROUP BY account_id, kind",
            params,
        )
        result: dict[str, dict[str, int]] = {}
        for account, kind, total in rows:
            result.setdefault(account, {})[kind] = int(total)
        return result
