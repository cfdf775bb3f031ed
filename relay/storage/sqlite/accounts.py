"""SQLite backend: account standing, windowed counters and account flags."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.storage.events import account_state_events
from relay.storage.records import (
    BUCKET,
    PURGED_REPLY,
    AccountState,
    AccountStateName,
    TermsAcceptance,
    counter_kinds,
)
from relay.storage.sqlite.core import SqliteCore
from relay.storage.sqlite.events import insert_events

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence


def _bucket_add(
    db: sqlite3.Connection,
    account_id: str,
    kind: str,
    amount: int,
    *,
    now: float,
    window: float,
    limit: int | None = None,
) -> tuple[bool, int]:
    """Add `amount` to a windowed counter kept in one-minute buckets (bounded work per call)."""
    total = _bucket_total(db, account_id, kind, now=now, window=window)
    if limit is not None and total + amount > limit:
        return False, total
    _bucket_put(db, account_id, kind, amount, now=now)
    return True, total + amount


def _bucket_total(
    db: sqlite3.Connection, account_id: str, kind: str, *, now: float, window: float
) -> int:
    """A windowed counter's total, after dropping its buckets wholly outside the window."""
    db.execute(
        "DELETE FROM window_counts WHERE account_id = ? AND kind = ? AND bucket <= ?",
        (account_id, kind, now - window - BUCKET),
    )
    row = db.execute(
        "SELECT COALESCE(SUM(count), 0) FROM window_counts WHERE account_id = ? AND kind = ?",
        (account_id, kind),
    ).fetchone()
    return int(row[0]) if row else 0


def _bucket_put(
    db: sqlite3.Connection, account_id: str, kind: str, amount: int, *, now: float
) -> None:
    db.execute(
        "INSERT INTO window_counts (account_id, kind, bucket, count) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (account_id, kind, bucket) DO UPDATE SET count = count + excluded.count",
        (account_id, kind, now - now % BUCKET, amount),
    )


class SqliteAccounts(SqliteCore):
    """The accounts part of `SqliteStore`."""

    async def account_state(self, account_id: str) -> AccountState | None:
        """The account's current state."""
        rows = await self._lookup(
            "SELECT account_id, state, reason, actor, changed_at FROM account_states"
            " WHERE account_id = ?",
            (account_id,),
        )
        return AccountState(*rows[0]) if rows else None

    async def set_account_state(
        self, account_id: str, state: AccountStateName, *, reason: str, actor: str, now: float
    ) -> int:
        """Change the state with its audit record; purge pending mail on termination."""

        def operation(db: sqlite3.Connection) -> int:
            db.execute(
                "INSERT INTO account_states (account_id, state, reason, actor, changed_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET"
                " state = excluded.state, reason = excluded.reason, actor = excluded.actor,"
                " changed_at = excluded.changed_at",
                (account_id, state, reason, actor, now),
            )
            db.execute(
                "INSERT INTO account_events (account_id, state, reason, actor, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (account_id, state, reason, actor, now),
            )
            insert_events(
                db, account_state_events(account_id, state, reason=reason, actor=actor, now=now)
            )
            pending = (
                "SELECT r.id FROM recipients r JOIN messages m ON m.id = r.message_id"
                " WHERE m.account_id = ? AND m.kind = 'message' AND r.status = 'pending'"
            )
            if state == "terminated":
                cursor = db.execute(
                    "UPDATE recipients SET status = 'failed', lease = NULL, lease_until = 0,"  # noqa: S608 - constant SQL
                    f" last_reply = ?, updated_at = ? WHERE id IN ({pending})",
                    (PURGED_REPLY, now, account_id),
                )
                return cursor.rowcount
            row = db.execute(f"SELECT COUNT(*) FROM ({pending})", (account_id,)).fetchone()  # noqa: S608
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

    async def account_states(self) -> dict[str, AccountState]:
        """Every changed account's current state, in one query."""
        rows = await self._fetch(
            "SELECT account_id, state, reason, actor, changed_at FROM account_states"
        )
        return {row[0]: AccountState(*row) for row in rows}

    async def account_changes(self, *, since: float) -> list[AccountState]:
        """Every account's state changes since `since`, in one query."""
        rows = await self._fetch(
            "SELECT account_id, state, reason, actor, at FROM account_events"
            " WHERE at >= ? ORDER BY id",
            (since,),
        )
        return [AccountState(*row) for row in rows]

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

        def operation(db: sqlite3.Connection) -> tuple[bool, int]:
            if not distinct:
                return _bucket_add(db, account_id, kind, 1, now=now, window=window, limit=limit)
            db.execute(
                "DELETE FROM window_events WHERE account_id = ? AND kind = ? AND at <= ?",
                (account_id, kind, now - window),
            )
            counted = "COUNT(DISTINCT item)" if distinct else "COUNT(*)"
            row = db.execute(
                f"SELECT {counted}, SUM(item = ?) FROM window_events"  # noqa: S608 - constant
                " WHERE account_id = ? AND kind = ?",
                (item, account_id, kind),
            ).fetchone()
            count, seen = (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)
            if distinct and seen:
                return True, count
            if limit is not None and count >= limit:
                return False, count
            db.execute(
                "INSERT INTO window_events (account_id, kind, item, at) VALUES (?, ?, ?, ?)",
                (account_id, kind, item, now),
            )
            return True, count + 1

        return await self._write(operation)

    async def window_take_all(
        self,
        account_id: str,
        counters: Sequence[tuple[str, int | None]],
        *,
        now: float,
        window: float,
    ) -> str | None:
        """Count an event in several windowed counters, all or none, in one write."""
        counter_kinds(counters)

        def operation(db: sqlite3.Connection) -> str | None:
            for kind, limit in counters:
                total = _bucket_total(db, account_id, kind, now=now, window=window)
                if limit is not None and total + 1 > limit:
                    return kind
            for kind, _ in counters:
                _bucket_put(db, account_id, kind, 1, now=now)
            return None

        return await self._write(operation)

    async def record_campaign(
        self, account_id: str, campaign: str, recipients: int, *, now: float, window: float
    ) -> int:
        """Add a campaign's recipients; return its total over the window."""

        def operation(db: sqlite3.Connection) -> int:
            _, total = _bucket_add(
                db, account_id, f"campaign:{campaign}", recipients, now=now, window=window
            )
            return total

        return await self._write(operation)

    async def set_flag(self, account_id: str, flag: str, *, reason: str, now: float) -> bool:
        """Set an account flag once."""

        def operation(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "INSERT INTO account_flags (account_id, flag, reason, set_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (account_id, flag, reason, now),
            )
            return cursor.rowcount == 1

        return await self._write(operation)

    async def has_flag(self, account_id: str, flag: str) -> bool:
        """Whether the flag is set."""
        rows = await self._lookup(
            "SELECT 1 FROM account_flags WHERE account_id = ? AND flag = ?", (account_id, flag)
        )
        return bool(rows)

    async def repeat_counts(
        self, account_id: str, campaign: str, recipients: list[str], *, since: float
    ) -> dict[str, int]:
        """Copies of the campaign spooled per recipient since `since` (on the reader)."""
        keys = {recipient: recipient.lower() for recipient in recipients}
        wanted = sorted(set(keys.values()))
        seen: dict[str, int] = {}
        for first in range(0, len(wanted), 500):
            chunk = wanted[first : first + 500]
            rows = await self._lookup(
                "SELECT recipient, COUNT(*) FROM repeat_sends WHERE account_id = ?"  # noqa: S608
                " AND campaign = ? AND at > ? AND recipient IN"
                f" ({', '.join('?' * len(chunk))}) GROUP BY recipient",
                (account_id, campaign, since, *chunk),
            )
            seen |= {row[0]: int(row[1]) for row in rows}
        return {recipient: seen.get(key, 0) for recipient, key in keys.items()}

    async def accept_terms(self, acceptance: TermsAcceptance) -> bool:
        """Record an acceptance once per account and version."""
        a = acceptance
        cursor = await self._write(
            lambda db: db.execute(
                "INSERT INTO terms_acceptances (account_id, version, accepted_at, accepted_by,"
                " ip, user_agent) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (a.account_id, a.version, a.accepted_at, a.accepted_by, a.ip, a.user_agent),
            )
        )
        return bool(cursor.rowcount == 1)

    async def terms_accepted(self, account_id: str) -> list[TermsAcceptance]:
        """The versions the account accepted, oldest first."""
        rows = await self._fetch(
            "SELECT account_id, version, accepted_at, accepted_by, ip, user_agent"
            " FROM terms_acceptances WHERE account_id = ? ORDER BY accepted_at",
            (account_id,),
        )
        return [TermsAcceptance(*row) for row in rows]

    async def terms_published(self, version: str, *, now: float) -> float:
        """When the version took effect (recorded the first time it is asked)."""
        rows = await self._fetch(
            "SELECT published_at FROM terms_versions WHERE version = ?", (version,)
        )
        if rows:
            return float(rows[0][0])

        def operation(db: sqlite3.Connection) -> float:
            db.execute(
                "INSERT INTO terms_versions (version, published_at) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                (version, now),
            )
            row = db.execute(
                "SELECT published_at FROM terms_versions WHERE version = ?", (version,)
            ).fetchone()
            return float(row[0])

        return await self._write(operation)

    async def prune_windows(self, before: float) -> int:
        """Drop windowed counts and events older than `before` (keys no longer in use)."""

        def operation(db: sqlite3.Connection) -> int:
            start = db.total_changes
            db.execute("DELETE FROM window_counts WHERE bucket < ?", (before,))
            db.execute("DELETE FROM window_events WHERE at < ?", (before,))
            db.execute("DELETE FROM repeat_sends WHERE at < ?", (before,))
            return db.total_changes - start

        return await self._write(operation)
