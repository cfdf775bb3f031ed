"""The storage interface every backend implements; the records it stores are in `records`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from relay.storage.domainchecks import DomainCheck
    from relay.storage.records import (
        AccountState,
        AccountStateName,
        AuditEntry,
        Case,
        CaseChange,
        CaseEvent,
        CaseStatus,
        Confirmation,
        Consent,
        DeliveryJob,
        Event,
        JournalEntry,
        NewEvent,
        NewMessage,
        NodeRecord,
        QueueAction,
        QueuedMessage,
        QueueEntry,
        QueueState,
        SchemaState,
        SentRecipient,
        Subscription,
        Suppression,
        TermsAcceptance,
        WebhookState,
    )


class Store(Protocol):
    """Everything optin-relay keeps, behind one interface (SQLite or PostgreSQL)."""

    async def open(self) -> None:
        """Connect; raise StoreError when the backend cannot be reached."""
        ...

    async def migrate(self) -> None:
        """Bring the schema up to date (safe to run concurrently and repeatedly).

        Records the oldest release that may run on it (relay.storage.schema).
        """
        ...

    async def backup(self, target: Path) -> int:
        """A consistent copy of the store at `target` while it is in use; its size in bytes.

        SQLite only (its online backup API); PostgreSQL raises StoreError (pg_dump, PITR).
        """
        ...

    async def schema_state(self) -> SchemaState:
        """The migration steps applied, and the oldest release the schema allows."""
        ...

    # --- the relay processes on the store (relay.cluster) ---

    async def node_heartbeat(self, node: NodeRecord) -> None:
        """Record the process's heartbeat (or its clean stop, `stopped_at`)."""
        ...

    async def nodes(self, since: float) -> list[NodeRecord]:
        """The processes whose last heartbeat is at or after `since`, oldest start first."""
        ...

    async def leases_by_node(self, now: float) -> dict[str, tuple[int, int]]:
        """Per lease holder (node id): recipients and webhook endpoints it holds at `now`."""
        ...

    async def save_domain_check(self, check: DomainCheck) -> DomainCheck:
        """Keep `check` for its account and domain, after the one kept before (what it keeps).

        An unknown check keeps the status the one before it settled (DomainCheck.after).
        """
        ...

    async def domain_checks(self, account_id: str | None = None) -> list[DomainCheck]:
        """The checks kept, of one account or of all, by account and domain."""
        ...

    async def queue_summary(self, now: float) -> dict[str, tuple[int, float]]:
        """Pending recipients by queue state (queued, active, deferred, held).

        For each: how many, and when the oldest of their messages was received.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    async def ping(self) -> None:
        """Raise StoreError unless the backend answers."""
        ...

    async def spool(self, message: NewMessage) -> None:
        """Commit `message` and its recipients durably; return only once durable."""
        ...

    async def claim(
        self, *, lease: str, now: float, lease_until: float, limit: int
    ) -> list[DeliveryJob]:
        """Lease up to `limit` due recipients to `lease`; no recipient goes to two leases."""
        ...

    async def content(self, message_id: str) -> bytes:
        """The spooled content of `message_id`."""
        ...

    async def delivered(
        self, job: DeliveryJob, *, reply: str, now: float, dsn: NewMessage | None = None
    ) -> bool:
        """Mark `job` delivered; False if its lease was lost meanwhile.

        `dsn`: the report the sender asked for (NOTIFY=SUCCESS), spooled in the same
        transaction.
        """
        ...

    async def deferred(
        self, job: DeliveryJob, *, reply: str, now: float, next_attempt: float
    ) -> bool:
        """Count a failed attempt of `job` and schedule the next; False if its lease was lost."""
        ...

    async def failed(
        self, job: DeliveryJob, *, reply: str, now: float, dsn: NewMessage | None
    ) -> bool:
        """Mark `job` failed for good and spool `dsn` in the same transaction."""
        ...

    async def renew(self, lease: str, *, lease_until: float) -> int:
        """Extend `lease` on every recipient it still holds; return how many."""
        ...

    async def release(self, lease_prefix: str) -> int:
        """Give back every lease starting with `lease_prefix` (graceful shutdown)."""
        ...

    async def queue(
        self,
        limit: int = 1000,
        *,
        account_id: str | None = None,
        state: QueueState | None = None,
        now: float = 0.0,
    ) -> list[QueueEntry]:
        """Recipients not yet delivered or failed, oldest first, each with its state at `now`."""
        ...

    async def queued_message(self, message_id: str) -> QueuedMessage | None:
        """One message of the spool with all its recipients (None: no such message)."""
        ...

    async def retry_now(
        self,
        *,
        now: float,
        action: QueueAction,
        message_ids: list[str] | None = None,
        account_id: str | None = None,
    ) -> int:
        """Make pending recipients due at `now`: of these messages, of this account, or all.

        Audited as `action` (one row per named message, else one for the account or queue).
        """
        ...

    async def hold(
        self,
        *,
        hold: bool,
        action: QueueAction,
        message_ids: list[str] | None = None,
        account_id: str | None = None,
    ) -> list[str]:
        """Put messages with pending recipients on hold (or release them); the ids changed.

        A held message is never claimed; a delivery already in flight finishes.
        """
        ...

    async def delete_queued(
        self,
        message_ids: list[str],
        *,
        action: QueueAction,
        reply: str,
        dsns: list[NewMessage],
    ) -> int:
        """Take the pending recipients of `message_ids` out of the queue for good.

        They end with status `deleted` and `reply` (a `message.failed` event each), `dsns`
        are spooled in the same transaction; how many recipients were deleted.
        """
        ...

    async def queue_actions(self, message_id: str) -> list[QueueAction]:
        """The operators' changes to the queue that touched `message_id`, oldest first.

        Changes of its whole account or of the whole queue made while it was pending count.
        """
        ...

    # --- the journal (relay.journal: every decision about a message, for explain and replay) ---

    async def record_journal(self, entries: list[JournalEntry]) -> None:
        """Write journal entries whose decision is not stored otherwise."""
        ...

    async def journal(self, message_id: str) -> list[JournalEntry]:
        """Every entry about `message_id`, in the order written."""
        ...

    async def journal_messages(self, recipient: str, *, since: float, limit: int) -> list[str]:
        """Queue ids of the messages journaled for `recipient` since `since`, oldest first."""
        ...

    async def journal_window(
        self, *, since: float, until: float, after_id: int = 0, limit: int = 10_000
    ) -> list[JournalEntry]:
        """Mail, rcpt and data entries in [since, until), by id after `after_id` (replay)."""
        ...

    async def prune_journal(self, before: float) -> int:
        """Delete entries older than `before`, a few thousand at a time; how many went."""
        ...

    async def counts(self) -> dict[str, int]:
        """Number of recipients in each state."""
        ...

    async def backlog(self) -> tuple[int, float | None]:
        """Recipients pending delivery, and when the first of them in spool order was received."""
        ...

    # --- events (the outbox; the write methods add the events of their facts themselves) ---

    async def record_events(
        self, events: list[NewEvent], journal: list[JournalEntry] | None = None
    ) -> None:
        """Write events whose fact is stored nowhere else (a recipient refused at RCPT).

        `journal`: the decisions behind them, in the same transaction.
        """
        ...

    async def message_events(self, message_id: str, recipients: list[str]) -> list[Event]:
        """Events about `message_id`, and later ones about its recipients from its account.

        For `explain`: what happened to the message and the feedback about it, oldest first.
        """
        ...

    async def events(
        self,
        account_id: str,
        *,
        after: str | None = None,
        types: frozenset[str] | None = None,
        limit: int = 100,
    ) -> list[Event]:
        """The account's events after cursor `after` (None: from the start), oldest first.

        Paging by the last event's cursor never skips or repeats one, with several relays
        writing to one store. A cursor this store never issued (malformed, or past the end of
        the feed) raises `CursorError`.
        """
        ...

    async def prune_events(self, before: float) -> int:
        """Delete events older than `before`, a few thousand at a time; how many went."""
        ...

    async def events_behind(self, account_id: str, after: str | None) -> tuple[int, float | None]:
        """How many of the account's events follow cursor `after`, and the oldest one's time.

        What a webhook endpoint at `after` has still to get (for `webhooks status`).
        """
        ...

    async def events_tail(self, account_id: str) -> str | None:
        """The cursor of the account's newest event (None: it has none)."""
        ...

    # --- webhook endpoints' progress through the events ---

    async def webhook_lease(
        self,
        key: str,
        account_id: str,
        url: str,
        *,
        start: str | None,
        lease: str,
        now: float,
        lease_until: float,
    ) -> WebhookState | None:
        """Lease the endpoint if it is due and enabled (created at cursor `start` if new)."""
        ...

    async def webhook_advance(
        self, key: str, lease: str, *, cursor: str, sent: int = 1, lease_until: float | None = None
    ) -> bool:
        """Record the endpoint's place `cursor` and `sent` more events; it is healthy again.

        With `lease_until`, the lease is renewed until then (a relay that stops renewing, a
        crashed one, loses the endpoint to another relay once it runs out).
        """
        ...

    async def webhook_fail(
        self,
        key: str,
        lease: str,
        *,
        error: str,
        now: float,
        next_attempt: float,
        disable: bool,
    ) -> bool:
        """Record a failed attempt: retry at `next_attempt`, or disable the endpoint."""
        ...

    async def webhook_release(self, key: str, lease: str) -> None:
        """Give the lease back (nothing left to send, or the process is stopping)."""
        ...

    async def webhook_states(self) -> list[WebhookState]:
        """Every endpoint's state."""
        ...

    async def webhook_enable(self, key: str, *, now: float) -> bool:
        """Enable a disabled endpoint again, due at once."""
        ...

    async def webhook_rewind(self, key: str, account_id: str, *, since: float, now: float) -> bool:
        """Move the endpoint back to just before the account's first event at or after `since`.

        The lease of the relay serving it is taken away with it: that relay's next advance
        fails instead of moving the endpoint past the replayed events again, and the endpoint
        is served from its new place (what was in flight is sent again, as a replay does).
        """
        ...

    # --- suppression list ---

    async def suppress(
        self,
        entry: Suppression,
        *,
        actor: str,
        account_id: str | None = None,
        details: dict[str, str] | None = None,
    ) -> bool:
        """Add `entry` (address normalised); False if it was already there. Audited.

        `account_id` is the account whose mail led to it, when that is not the scope (a global
        unsubscribe): its events go to that account. `details` are added to its events' data
        (a complaint's case id).
        """
        ...

    async def suppress_many(self, entries: list[Suppression]) -> int:
        """Add entries in bulk (imports); return how many were new."""
        ...

    async def unsuppress(
        self, address: str, scope: str, *, reason: str, actor: str, now: float
    ) -> bool:
        """Remove a suppression, leaving an audit record; False if there was none."""
        ...

    async def suppressed(self, address: str, account_id: str) -> Suppression | None:
        """The suppression that stops `account_id` mailing `address` (its own or global)."""
        ...

    async def suppressions(
        self, *, scope: str | None = None, after: tuple[str, str] = ("", ""), limit: int = 1000
    ) -> list[Suppression]:
        """A page of suppressions ordered by (address, scope), starting after `after`."""
        ...

    async def audit(self, address: str) -> list[AuditEntry]:
        """Every recorded change for `address`, oldest first."""
        ...

    # --- account lifecycle ---

    async def account_state(self, account_id: str) -> AccountState | None:
        """The account's current state (None: never changed, so active)."""
        ...

    async def set_account_state(
        self, account_id: str, state: AccountStateName, *, reason: str, actor: str, now: float
    ) -> int:
        """Change the state and append it to the audit trail.

        Returns the account's pending recipients: held when suspended, released when active,
        purged when terminated.
        """
        ...

    async def account_history(self, account_id: str) -> list[AccountState]:
        """Every state change of the account, oldest first."""
        ...

    async def account_states(self) -> dict[str, AccountState]:
        """The current state of every account whose state ever changed (the others are active)."""
        ...

    async def account_changes(self, *, since: float) -> list[AccountState]:
        """Every account's state changes at or after `since`, oldest first."""
        ...

    async def accept_terms(self, acceptance: TermsAcceptance) -> bool:
        """Record an acceptance; False if the account had accepted that version already."""
        ...

    async def terms_accepted(self, account_id: str) -> list[TermsAcceptance]:
        """The versions the account accepted, oldest first."""
        ...

    async def terms_published(self, version: str, *, now: float) -> float:
        """When `version` took effect: the first time any relay asked (`now` if this is it)."""
        ...

    # --- consent (opt-in records) ---

    async def record_consents(self, records: list[Consent]) -> int:
        """Store opt-in records (address normalised), replacing same account/address/list."""
        ...

    async def consent(self, account_id: str, address: str) -> Consent | None:
        """A standing (not withdrawn) opt-in record of `address` for the account, if any."""
        ...

    async def consents(
        self,
        *,
        account_id: str | None = None,
        address: str | None = None,
        after: tuple[str, str, str] = ("", "", ""),
        limit: int = 1000,
    ) -> list[Consent]:
        """A page of records ordered by (account, address, list), starting after `after`."""
        ...

    # --- sliding windows (rate limits, abuse counters) ---

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
        """Count one event of `kind` in the sliding window, atomically across processes.

        With `limit`, an event that would exceed it is not counted and `(False, count)` comes
        back. With `distinct`, an `item` already counted in the window is not counted again.
        Returns whether it was allowed and the count in the window afterwards. Plain counts are
        kept in one-minute buckets that leave only once wholly outside the window: a limit may
        hold up to a minute longer, never shorter.
        """
        ...

    async def window_take_all(
        self,
        account_id: str,
        counters: Sequence[tuple[str, int | None]],
        *,
        now: float,
        window: float,
    ) -> str | None:
        """Count one event in each of `counters` (kind, limit) together, atomically.

        Every counter takes the event, or none does: when one is at its limit (counted as
        `window_take` counts plain events), nothing is counted and its kind comes back (the
        first such in the order given). One write for several limits of one event. Each kind
        may appear once (ValueError otherwise).
        """
        ...

    async def repeat_counts(
        self, account_id: str, campaign: str, recipients: list[str], *, since: float
    ) -> dict[str, int]:
        """Copies of `campaign` spooled for each recipient since `since` (lower-case match).

        The spool records a copy per recipient of every account message it commits; reading
        them takes no write (a race between two messages may let one copy past the limit).
        """
        ...

    async def prune_windows(self, before: float) -> int:
        """Drop windowed counts and events older than `before`; return how many went.

        Keys that are used again clean themselves; this removes those that never are (one per
        client IP or address the subscription limits saw).
        """
        ...

    # --- campaigns and account flags ---

    async def record_campaign(
        self, account_id: str, campaign: str, recipients: int, *, now: float, window: float
    ) -> int:
        """Count `recipients` for the campaign; return its total within the last `window`."""
        ...

    async def set_flag(self, account_id: str, flag: str, *, reason: str, now: float) -> bool:
        """Set a flag on the account; False if it was already set."""
        ...

    async def has_flag(self, account_id: str, flag: str) -> bool:
        """Whether the account carries `flag`."""
        ...

    # --- feedback: attribution, cases and account statistics ---

    async def sent(self, recipient_id: int) -> SentRecipient | None:
        """The spooled recipient with this id (the id bounce and trace tokens carry)."""
        ...

    async def sent_in_message(self, message_id: str) -> list[SentRecipient]:
        """Every recipient of the spooled message `message_id`."""
        ...

    async def open_case(self, case: Case) -> bool:
        """Record a new case; False if one for the same account, recipient and reference exists."""
        ...

    async def case(self, case_id: str) -> Case | None:
        """The case with this id."""
        ...

    async def case_events(self, case_id: str) -> list[CaseEvent]:
        """The case's history, oldest first."""
        ...

    async def cases(
        self,
        *,
        account_id: str | None = None,
        status: CaseStatus | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[Case]:
        """Cases, newest first, filtered by account, status and opening time."""
        ...

    async def change_case(
        self, case_id: str, change: CaseChange, *, expect: tuple[CaseStatus, ...], now: float
    ) -> bool:
        """Apply `change` if the case is in one of the `expect` states; False if it was not."""
        ...

    async def due_cases(self, now: float) -> list[Case]:
        """Cases awaiting proof, without an appeal, whose deadline has passed."""
        ...

    async def add_stats(self, rows: list[tuple[str, str, float, int]]) -> None:
        """Add `(account_id, kind, at, count)` rows to the hourly account statistics."""
        ...

    async def stats_by_day(
        self, *, since: float, account_id: str | None = None
    ) -> dict[str, dict[float, dict[str, int]]]:
        """Sums per account, UTC day (its start) and kind since `since` (the dashboard's charts)."""
        ...

    async def stats(
        self, *, since: float, account_id: str | None = None
    ) -> dict[str, dict[str, int]]:
        """Per account, the sum of each statistic over the buckets since `since`."""
        ...

    # --- confirmed opt-in subscriptions ---

    async def add_subscription(self, item: Subscription) -> None:
        """Record a pending subscription."""
        ...

    async def subscription(self, token_hash: str) -> Subscription | None:
        """The subscription whose confirmation token hashes to `token_hash`."""
        ...

    async def subscriptions_of(self, account_id: str, address: str) -> list[Subscription]:
        """The account's subscriptions for `address`, newest first."""
        ...

    async def confirm_subscription(
        self, token_hash: str, confirmation: Confirmation
    ) -> Subscription | None:
        """Confirm a pending, unexpired subscription in one transaction; None if there is none.

        Writes the opt-in record (an earlier record for the same list moves to the history),
        and lifts an account-scoped suppression whose reason is `unsubscribe` (audited);
        complaint and bounce suppressions stay.
        """
        ...

    async def withdraw_consents(
        self, address: str, account_id: str | None, *, at: float, how: str
    ) -> int:
        """Mark the standing opt-in records of `address` withdrawn (all accounts when None)."""
        ...

    async def consent_history(self, account_id: str, address: str) -> list[Consent]:
        """Earlier opt-in records of `address` that a re-subscription replaced, oldest first."""
        ...
