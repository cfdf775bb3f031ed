"""PostgreSQL backend: account standing, windowed counters and account flags."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from relay.errors import StoreError
from relay.storage.events import account_state_events
from relay.storage.postgres.core import DB_ERRORS, Batcher, PostgresCore
from relay.storage.postgres.events import insert_events
from relay.storage.records import (
    BUCKET,
    PURGED_REPLY,
    AccountState,
    AccountStateName,
    TermsAcceptance,
    counter_kinds,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


# Windowed counters (rate limits, campaign sizes) commit without waiting for the WAL flush,
# which was a third of a counter's cost on the database server (0.18 to 0.13 ms of its CPU per
# call) and 40 % of its time (0.34 to 0.20 ms). Visibility and the advisory locks are
# unchanged, so every node still sees every count at once; a crash of the database server (not
# of a relay) may forget the counts of its last moments (at most three `wal_writer_delay`s,
# 0.6 s by default), never a spooled message. The setting (`set_config('synchronous_commit',
# 'off', true)` in the counters' statement) is local to that statement's own transaction,
# on a connection of its own from the pool: a counter never shares one with a durable write.


# One windowed counter of an operation: account, kind, limit, amount, bucket, expired before.
Counter = tuple[str, str, int | None, int, float, float]
# What an operation's counters came to: the first kind at its limit (None when counted) and
# the total of its first counter.
Counted = tuple[str | None, int]


def _counter(
    account_id: str, kind: str, limit: int | None, amount: int, *, now: float, window: float
) -> Counter:
    return account_id, kind, limit, amount, now - now % BUCKET, now - window - BUCKET


class PostgresAccounts(PostgresCore):
    """The accounts part of `PostgresStore`."""

    @functools.cached_property
    def _counters(self) -> Batcher[tuple[Counter, ...], Counted]:
        return Batcher(self._apply_counters)

    def _batchers(self) -> list[Batcher[Any, Any]]:
        return [*super()._batchers(), self._counters]

    async def _apply_counters(self, operations: list[tuple[Counter, ...]]) -> list[Counted]:
        """The counters concurrent sessions asked for meanwhile: one call of `window_apply`.

        Migration 21: applied in order, all in one transaction, committed as every counter is
        (without waiting for the WAL flush, see above).
        """
        rows = [(n, *counter) for n, operation in enumerate(operations) for counter in operation]
        async with self._acquire() as con:
            found = await con.fetch(
                "SELECT w.op, w.refused, w.total FROM window_apply($1::int[], $2::text[],"
                " $3::text[], $4::int[], $5::int[], $6::float8[], $7::float8[]) w,"
                " set_config('synchronous_commit', 'off', true)",
                *(list(column) for column in zip(*rows, strict=True)),
            )
        counted = {row[0]: (row[1], int(row[2])) for row in found}
        return [counted[n] for n in range(len(operations))]

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
                await insert_events(
                    con,
                    account_state_events(account_id, state, reason=reason, actor=actor, now=now),
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
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def account_history(self, account_id: str) -> list[AccountState]:
        """The account's audit trail."""
        rows = await self._fetch(
            "SELECT account_id, state, reason, actor, at FROM account_events"
            " WHERE account_id = $1 ORDER BY id",
            account_id,
        )
        return [AccountState(*tuple(row)) for row in rows]

    async def account_states(self) -> dict[str, AccountState]:
        """Every changed account's current state, in one query."""
        rows = await self._fetch(
            "SELECT account_id, state, reason, actor, changed_at FROM account_states"
        )
        return {row[0]: AccountState(*tuple(row)) for row in rows}

    async def account_changes(self, *, since: float) -> list[AccountState]:
        """Every account's state changes since `since`, in one query."""
        rows = await self._fetch(
            "SELECT account_id, state, reason, actor, at FROM account_events"
            " WHERE at >= $1 ORDER BY id",
            since,
        )
        return [AccountState(*tuple(row)) for row in rows]

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
        if not distinct:  # batched with the other sessions' counters
            refused, total = await self._counters.submit(
                (_counter(account_id, kind, limit, 1, now=now, window=window),)
            )
            return refused is None, total
        try:
            async with self._acquire() as con, con.transaction():
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
                    "SELECT COUNT(DISTINCT item), COUNT(*) FILTER (WHERE item = $3)"
                    " FROM window_events"
                    " WHERE account_id = $1 AND kind = $2",
                    account_id,
                    kind,
                    item,
                )
                count, seen = (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)
                if seen:
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
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def window_take_all(
        self,
        account_id: str,
        counters: Sequence[tuple[str, int | None]],
        *,
        now: float,
        window: float,
    ) -> str | None:
        """Count an event in several windowed counters, all or none (batched, `window_apply`)."""
        if not counter_kinds(counters):  # ValueError when a kind repeats
            return None
        refused, _ = await self._counters.submit(
            tuple(
                _counter(account_id, kind, limit, 1, now=now, window=window)
                for kind, limit in counters
            )
        )
        return refused

    async def record_campaign(
        self, account_id: str, campaign: str, recipients: int, *, now: float, window: float
    ) -> int:
        """Add a campaign's recipients; return its total over the window (batched)."""
        kind = f"campaign:{campaign}"
        _, total = await self._counters.submit(
            (_counter(account_id, kind, None, recipients, now=now, window=window),)
        )
        return total

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

    async def repeat_counts(
        self, account_id: str, campaign: str, recipients: list[str], *, since: float
    ) -> dict[str, int]:
        """Copies of the campaign spooled per recipient since `since`."""
        keys = {recipient: recipient.lower() for recipient in recipients}
        rows = await self._fetch(
            "SELECT recipient, COUNT(*) FROM repeat_sends WHERE account_id = $1"
            " AND campaign = $2 AND at > $3 AND recipient = ANY($4::text[]) GROUP BY recipient",
            account_id,
            campaign,
            since,
            sorted(set(keys.values())),
        )
        seen = {row[0]: int(row[1]) for row in rows}
        return {recipient: seen.get(key, 0) for recipient, key in keys.items()}

    async def accept_terms(self, acceptance: TermsAcceptance) -> bool:
        """Record an acceptance once per account and version."""
        a = acceptance
        rows = await self._fetch(
            "INSERT INTO terms_acceptances (account_id, version, accepted_at, accepted_by, ip,"
            " user_agent) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1",
            a.account_id,
            a.version,
            a.accepted_at,
            a.accepted_by,
            a.ip,
            a.user_agent,
        )
        return bool(rows)

    async def terms_accepted(self, account_id: str) -> list[TermsAcceptance]:
        """The versions the account accepted, oldest first."""
        rows = await self._fetch(
            "SELECT account_id, version, accepted_at, accepted_by, ip, user_agent"
            " FROM terms_acceptances WHERE account_id = $1 ORDER BY accepted_at",
            account_id,
        )
        return [TermsAcceptance(*tuple(row)) for row in rows]

    async def terms_published(self, version: str, *, now: float) -> float:
        """When the version took effect (recorded the first time it is asked)."""
        await self._fetch(
            "INSERT INTO terms_versions (version, published_at) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            version,
            now,
        )
        rows = await self._fetch(
            "SELECT published_at FROM terms_versions WHERE version = $1", version
        )
        return float(rows[0][0])

    async def prune_windows(self, before: float) -> int:
        """Drop windowed counts and events older than `before` (keys no longer in use)."""
        counts = await self._fetch(
            "DELETE FROM window_counts WHERE bucket < $1 RETURNING 1", before
        )
        events = await self._fetch("DELETE FROM window_events WHERE at < $1 RETURNING 1", before)
        repeats = await self._fetch("DELETE FROM repeat_sends WHERE at < $1 RETURNING 1", before)
        return len(counts) + len(events) + len(repeats)
