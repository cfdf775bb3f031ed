"""PostgreSQL backend: confirmed opt-in subscriptions, consent withdrawal and history."""

from __future__ import annotations

from relay.errors import StoreError
from relay.storage.events import confirmation_events, subscription_events
from relay.storage.postgres.core import DB_ERRORS, PostgresCore
from relay.storage.postgres.events import insert_events
from relay.storage.postgres.lists import insert_audit
from relay.storage.records import (
    RESUBSCRIBED,
    AuditEntry,
    Confirmation,
    Consent,
    Subscription,
    consent_row,
    normalize_address,
    subscription_row,
)
from relay.storage.sql import CONSENT_COLUMNS, CONSENT_UPSERT, SUBSCRIPTION_COLUMNS


def _marks(columns: str) -> str:
    return ", ".join(f"${i}" for i in range(1, len(columns.split(",")) + 1))


class PostgresSubscriptions(PostgresCore):
    """The subscriptions part of `PostgresStore`."""

    async def add_subscription(self, item: Subscription) -> None:
        """Insert a pending subscription."""
        try:
            async with self._acquire() as con, con.transaction():
                await con.execute(
                    f"INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS})"  # noqa: S608 - constant SQL
                    f" VALUES ({_marks(SUBSCRIPTION_COLUMNS)})",
                    *subscription_row(item),
                )
                await insert_events(con, subscription_events(item))
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def subscription(self, token_hash: str) -> Subscription | None:
        """One subscription by its token's hash."""
        rows = await self._fetch(
            f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE token_hash = $1",  # noqa: S608
            token_hash,
        )
        return Subscription(*tuple(rows[0])) if rows else None

    async def subscriptions_of(self, account_id: str, address: str) -> list[Subscription]:
        """The account's subscriptions for one address, newest first."""
        rows = await self._fetch(
            f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions"  # noqa: S608
            " WHERE account_id = $1 AND address = $2 ORDER BY created_at DESC",
            account_id,
            normalize_address(address),
        )
        return [Subscription(*tuple(row)) for row in rows]

    async def confirm_subscription(
        self, token_hash: str, confirmation: Confirmation
    ) -> Subscription | None:
        """Confirm, record the opt-in (history kept) and lift an unsubscribe, atomically."""
        record = confirmation.consent
        address = normalize_address(record.address)
        try:
            async with self._acquire() as con, con.transaction():
                row = await con.fetchrow(
                    "UPDATE subscriptions SET status = 'confirmed', confirmed_at = $1,"  # noqa: S608
                    " confirm_ip = $2, confirm_user_agent = $3"
                    " WHERE token_hash = $4 AND status = 'pending' AND expires_at > $1"
                    f" RETURNING {SUBSCRIPTION_COLUMNS}",
                    confirmation.now,
                    confirmation.ip,
                    confirmation.user_agent,
                    token_hash,
                )
                if row is None:
                    return None
                await con.execute(
                    f"INSERT INTO consent_history ({CONSENT_COLUMNS}, archived_at)"  # noqa: S608
                    f" SELECT {CONSENT_COLUMNS}, $1 FROM consents"
                    " WHERE account_id = $2 AND address = $3 AND list_id = $4",
                    confirmation.now,
                    record.account_id,
                    address,
                    record.list_id,
                )
                await con.execute(
                    f"INSERT INTO consents ({CONSENT_COLUMNS})"  # noqa: S608
                    f" VALUES ({_marks(CONSENT_COLUMNS)})" + CONSENT_UPSERT,
                    *consent_row(record),
                )
                lifted = await con.fetchval(
                    "DELETE FROM suppressions WHERE address = $1 AND scope = $2"
                    " AND reason = 'unsubscribe' RETURNING 1",
                    address,
                    record.account_id,
                )
                await insert_events(
                    con,
                    confirmation_events(
                        record, ip=confirmation.ip, lifted=lifted is not None, now=confirmation.now
                    ),
                )
                if lifted is not None:
                    entry = AuditEntry(
                        address,
                        record.account_id,
                        "remove",
                        RESUBSCRIBED,
                        confirmation.actor,
                        confirmation.now,
                    )
                    await insert_audit(con, entry)
                return Subscription(*tuple(row))
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def withdraw_consents(
        self, address: str, account_id: str | None, *, at: float, how: str
    ) -> int:
        """Mark standing records withdrawn."""
        rows = await self._fetch(
            "UPDATE consents SET withdrawn_at = $1, withdrawn_how = $2"
            " WHERE address = $3 AND ($4::text IS NULL OR account_id = $4)"
            " AND withdrawn_at IS NULL RETURNING 1",
            at,
            how,
            normalize_address(address),
            account_id,
        )
        return len(rows)

    async def consent_history(self, account_id: str, address: str) -> list[Consent]:
        """Replaced records, oldest first."""
        rows = await self._fetch(
            f"SELECT {CONSENT_COLUMNS} FROM consent_history"  # noqa: S608
            " WHERE account_id = $1 AND address = $2 ORDER BY archived_at",
            account_id,
            normalize_address(address),
        )
        return [Consent(*tuple(row)) for row in rows]
