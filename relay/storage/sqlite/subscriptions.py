"""SQLite backend: confirmed opt-in subscriptions, consent withdrawal and history."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.storage.events import confirmation_events, subscription_events
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
from relay.storage.sqlite.core import SqliteCore
from relay.storage.sqlite.events import insert_events
from relay.storage.sqlite.lists import insert_audit

if TYPE_CHECKING:
    import sqlite3

_MARKS = ", ".join("?" * len(SUBSCRIPTION_COLUMNS.split(",")))


class SqliteSubscriptions(SqliteCore):
    """The subscriptions part of `SqliteStore`."""

    async def add_subscription(self, item: Subscription) -> None:
        """Insert a pending subscription."""

        def operation(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}) VALUES ({_MARKS})",  # noqa: S608 - constant SQL
                subscription_row(item),
            )
            insert_events(db, subscription_events(item))

        await self._write(operation)

    async def subscription(self, token_hash: str) -> Subscription | None:
        """One subscription by its token's hash."""
        rows = await self._fetch(
            f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE token_hash = ?",  # noqa: S608
            (token_hash,),
        )
        return Subscription(*rows[0]) if rows else None

    async def subscriptions_of(self, account_id: str, address: str) -> list[Subscription]:
        """The account's subscriptions for one address, newest first."""
        rows = await self._fetch(
            f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions"  # noqa: S608
            " WHERE account_id = ? AND address = ? ORDER BY created_at DESC",
            (account_id, normalize_address(address)),
        )
        return [Subscription(*row) for row in rows]

    async def confirm_subscription(
        self, token_hash: str, confirmation: Confirmation
    ) -> Subscription | None:
        """Confirm, record the opt-in (history kept) and lift an unsubscribe, atomically."""
        record = confirmation.consent
        address = normalize_address(record.address)

        def operation(db: sqlite3.Connection) -> Subscription | None:
            before = db.total_changes
            db.execute(
                "UPDATE subscriptions SET status = 'confirmed', confirmed_at = ?,"
                " confirm_ip = ?, confirm_user_agent = ?"
                " WHERE token_hash = ? AND status = 'pending' AND expires_at > ?",
                (
                    confirmation.now,
                    confirmation.ip,
                    confirmation.user_agent,
                    token_hash,
                    confirmation.now,
                ),
            )
            if db.total_changes == before:
                return None
            db.execute(
                f"INSERT INTO consent_history ({CONSENT_COLUMNS}, archived_at)"  # noqa: S608
                f" SELECT {CONSENT_COLUMNS}, ? FROM consents"
                " WHERE account_id = ? AND address = ? AND list_id = ?",
                (confirmation.now, record.account_id, address, record.list_id),
            )
            db.execute(
                f"INSERT INTO consents ({CONSENT_COLUMNS})"  # noqa: S608
                f" VALUES ({', '.join('?' * len(CONSENT_COLUMNS.split(',')))})" + CONSENT_UPSERT,
                consent_row(record),
            )
            before = db.total_changes
            db.execute(
                "DELETE FROM suppressions"
                " WHERE address = ? AND scope = ? AND reason = 'unsubscribe'",
                (address, record.account_id),
            )
            lifted = db.total_changes != before
            insert_events(
                db,
                confirmation_events(
                    record, ip=confirmation.ip, lifted=lifted, now=confirmation.now
                ),
            )
            if lifted:
                entry = AuditEntry(
                    address,
                    record.account_id,
                    "remove",
                    RESUBSCRIBED,
                    confirmation.actor,
                    confirmation.now,
                )
                insert_audit(db, entry)
            row = db.execute(
                f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE token_hash = ?",  # noqa: S608
                (token_hash,),
            ).fetchone()
            return Subscription(*row) if row else None

        return await self._write(operation)

    async def withdraw_consents(
        self, address: str, account_id: str | None, *, at: float, how: str
    ) -> int:
        """Mark standing records withdrawn."""

        def operation(db: sqlite3.Connection) -> int:
            before = db.total_changes
            db.execute(
                "UPDATE consents SET withdrawn_at = ?, withdrawn_how = ?"
                " WHERE address = ? AND (? IS NULL OR account_id = ?) AND withdrawn_at IS NULL",
                (at, how, normalize_address(address), account_id, account_id),
            )
            return db.total_changes - before

        return await self._write(operation)

    async def consent_history(self, account_id: str, address: str) -> list[Consent]:
        """Replaced records, oldest first."""
        rows = await self._fetch(
            f"SELECT {CONSENT_COLUMNS} FROM consent_history"  # noqa: S608
            " WHERE account_id = ? AND address = ? ORDER BY archived_at, rowid",
            (account_id, normalize_address(address)),
        )
        return [Consent(*row) for row in rows]
