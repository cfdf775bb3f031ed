"""The records the store keeps and returns: what each row means, and how rows are built.

`relay.storage.base` re-exports every name here with the `Store` interface.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from relay.storage.sql import CASE_COLUMNS, SUBSCRIPTION_COLUMNS

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

MessageKind = Literal["message", "dsn", "notice"]  # notice: mail the relay itself writes


def new_message_id() -> str:
    """A queue id: sortable by time of creation, unique across processes."""
    return f"{time.time_ns() // 1_000_000:011X}{secrets.token_hex(5).upper()}"


@dataclass(frozen=True)
class NewMessage:
    """A message to commit to the spool, with every recipient still to be delivered."""

    id: str
    account_id: str | None
    mail_from: str
    recipients: tuple[str, ...]
    content: bytes
    received_at: float
    kind: MessageKind = "message"
    campaign: str | None = None
    journal: tuple[JournalEntry, ...] = ()  # written with the message (relay.journal)
    # Written in the message's own transaction too: facts about it that are stored nowhere
    # else (its recipients refused at DATA) and the relay's own mail about it (their DSN).
    events: tuple[NewEvent, ...] = ()
    notices: tuple[NewMessage, ...] = ()
    # What the sender asked of DSNs (relay.mail.dsnrequest), as stored: the message's RET and
    # ENVID, and the NOTIFY and ORCPT of the recipients that gave any.
    envelope_dsn: str | None = None
    recipient_dsn: Mapping[str, str] = field(default_factory=dict)


def new_event_id() -> str:
    """A stable, unique event id (the webhook-id of its deliveries), sortable by creation time.

    `evt_`, the creation time in milliseconds (11 hex digits), then 52 random bits (13): new
    ids land at the end of the unique index on `events.id` instead of anywhere in it, so an
    insert touches the index's last page, not one read from disk once the index outgrows the
    cache (`bench/event_ids.py`, 1,000,000 events, an 8 MB cache: 36.6 and 35.2 us of CPU per
    insert with random ids, 15.9 and 16.7 with these, same run).
    """
    return f"evt_{time.time_ns() // 1_000_000:011x}{secrets.token_hex(7)[:13]}"


@dataclass(frozen=True)
class NewEvent:
    """An event to write with its fact."""

    type: str
    account_id: str
    at: float
    message_id: str | None = None
    recipient: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_event_id)

    def data_json(self) -> str:
        """The type-specific fields as stored."""
        return json.dumps(self.data, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class Event:
    """A stored event, with the cursor that follows it."""

    id: str
    type: str
    account_id: str
    at: float
    message_id: str | None
    recipient: str | None
    data: dict[str, Any]
    cursor: str

    def payload(self) -> dict[str, Any]:
        """The event as the API and webhooks show it."""
        return {
            "id": self.id,
            "type": self.type,
            "timestamp": self.at,
            "account": self.account_id,
            "message_id": self.message_id,
            "recipient": self.recipient,
            "data": self.data,
        }


@dataclass(frozen=True)
class WebhookState:
    """Where one webhook endpoint is in its account's event feed, and how it is doing."""

    key: str
    account_id: str
    url: str
    cursor: str | None  # the last event delivered (None: none yet)
    delivered: int
    attempts: int  # failed attempts since the last success
    next_attempt: float
    failing_since: float | None
    disabled_at: float | None
    last_error: str | None
    lease: str | None = None  # who serves it now: `NODE:KEY:NS` (None: nobody)
    lease_until: float = 0.0  # when that lease runs out unless renewed


WEBHOOK_COLUMNS = (
    "key, account_id, url, cursor, delivered, attempts, next_attempt, failing_since,"
    " disabled_at, last_error, lease, lease_until"
)


@dataclass(frozen=True)
class NodeRecord:
    """A relay process on the store, as its last heartbeat said (relay.cluster)."""

    id: str  # its delivery worker id: the prefix of its leases (`ID:N`, `ID:KEY:NS`)
    host: str
    pid: int
    version: str
    started_at: float
    heartbeat_at: float
    stopped_at: float | None  # a clean stop; None while it runs (or after a crash)
    listeners: tuple[str, ...]

    def row(self) -> tuple[Any, ...]:
        """Its values in NODE_COLUMNS' order."""
        return (
            self.id,
            self.host,
            self.pid,
            self.version,
            self.started_at,
            self.heartbeat_at,
            self.stopped_at,
            json.dumps(list(self.listeners)),
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> NodeRecord:
        """A record from a row of NODE_COLUMNS."""
        node_id, host, pid, version, started_at, heartbeat_at, stopped_at, listeners = row
        return cls(
            str(node_id),
            str(host),
            int(pid),
            str(version),
            float(started_at),
            float(heartbeat_at),
            None if stopped_at is None else float(stopped_at),
            tuple(json.loads(listeners)),
        )


NODE_COLUMNS = "id, host, pid, version, started_at, heartbeat_at, stopped_at, listeners"


@dataclass(frozen=True)
class SchemaState:
    """Where a store's schema stands, seen by this code (relay.storage.schema)."""

    applied: frozenset[int]
    known: tuple[int, ...]  # the steps this code has for the store's dialect
    min_version: str | None  # the oldest release the schema allows (None: it records none)

    @property
    def pending(self) -> list[int]:
        """The steps this code has that the schema lacks, in order."""
        return [step for step in self.known if step not in self.applied]

    @property
    def newer(self) -> list[int]:
        """The steps a newer release applied that this code does not know."""
        return sorted(self.applied - set(self.known))


@dataclass(frozen=True)
class DeliveryJob:
    """One recipient of a spooled message, leased to one delivery worker."""

    recipient_id: int
    message_id: str
    recipient: str
    attempts: int
    account_id: str | None
    mail_from: str
    received_at: float
    kind: MessageKind
    lease: str
    campaign: str | None = None
    dsn: str | None = None  # the recipient's NOTIFY and ORCPT, as stored
    envelope_dsn: str | None = None  # the message's RET and ENVID, as stored
    # What the render stage did to this copy (tokens, footer, signatures), journaled with the
    # outcome of the attempt; set by the worker after the render stage.
    render: Mapping[str, Any] | None = None


GLOBAL_SCOPE = "*"
BUCKET = 60.0  # seconds per bucket of windowed counters (rate limits, campaign sizes)
REASONS: tuple[str, ...] = ("unsubscribe", "complaint", "bounce", "manual", "import")


def normalize_address(address: str) -> str:
    """Suppressions match addresses case-insensitively."""
    return address.strip().lower()


# Mailbox providers that ignore dots in the local part, and their other names.
_DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def suppression_key(address: str) -> str:
    """What a suppressed address matches by: re-spellings of one mailbox share it.

    Lower case; the `+tag` of sub-addressing dropped (`foo+news@x` is `foo@x`); for the
    providers that ignore dots in the local part (Gmail), no dots, and `googlemail.com` is
    `gmail.com`. Over-matching errs on the side of the person who said stop.
    """
    local, at, domain = normalize_address(address).rpartition("@")
    if not at or not local:
        return normalize_address(address)
    if not local.startswith('"'):
        local = local.split("+", 1)[0] or local
    if domain in _DOTLESS_DOMAINS:
        local, domain = local.replace(".", ""), _DOTLESS_DOMAINS[domain]
    return f"{local}@{domain}"


def counter_kinds(counters: Sequence[tuple[str, int | None]]) -> list[str]:
    """The kinds of `window_take_all`'s counters, each once (ValueError when one repeats)."""
    kinds = [kind for kind, _ in counters]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"a windowed counter named twice: {kinds}")
    return kinds


@dataclass(frozen=True)
class Suppression:
    """An address that must not receive mail: from one account (`scope`) or any (`*`)."""

    address: str
    scope: str
    reason: str
    source: str
    created_at: float


@dataclass(frozen=True)
class AuditEntry:
    """A change to the suppression list, who made it and why."""

    address: str
    scope: str
    action: str
    reason: str
    actor: str
    at: float


AccountStateName = Literal["active", "suspended", "terminated"]
PURGED_REPLY = "purged: the account was terminated"


@dataclass(frozen=True)
class AccountState:
    """An account's standing, or one change of it in the audit trail."""

    account_id: str
    state: AccountStateName
    reason: str
    actor: str
    at: float


ConsentMethod = Literal["confirmed", "single", "imported"]


@dataclass(frozen=True)
class Consent:
    """An opt-in record: who, for which list, how, when, from where, told what, and proof."""

    account_id: str
    address: str
    list_id: str
    method: ConsentMethod
    subscribed_at: float
    confirmed_at: float | None
    source: str
    ip: str | None = None
    user_agent: str | None = None
    consent_text_version: str | None = None
    evidence: str | None = None
    withdrawn_at: float | None = None
    withdrawn_how: str | None = None  # one_click, page, mailto, fbl, complaint, ...


RESUBSCRIBED = "resubscribed through the confirmed opt-in form"


def consent_row(record: Consent) -> tuple[object, ...]:
    """A record's column values in the order of the consents table (both backends)."""
    return (
        record.account_id,
        normalize_address(record.address),
        record.list_id,
        record.method,
        record.subscribed_at,
        record.confirmed_at,
        record.source,
        record.ip,
        record.user_agent,
        record.consent_text_version,
        record.evidence,
        record.withdrawn_at,
        record.withdrawn_how,
    )


CaseStatus = Literal["open", "awaiting_proof", "upheld", "dismissed"]
STAT_BUCKET = 3600.0  # seconds per bucket of account statistics
STAT_KINDS: tuple[str, ...] = (
    "delivered",
    "refused",
    "unsubscribe",
    "complaint",
    "bounce",
    "soft_bounce",
)


def new_case_id() -> str:
    """A case id: sortable by time of opening, unique across processes."""
    return f"C{new_message_id()}"


@dataclass(frozen=True)
class Case:
    """A complaint against an account: who complained about which message, and where it stands."""

    id: str
    account_id: str
    recipient: str
    reference: str  # what the complaint is about: the relay's queue id, else the report's id
    message_id: str | None  # the relay's queue id, when the report was attributed to it
    source: str  # fbl | abuse | cli | http
    feedback_type: str
    report: bytes
    status: CaseStatus
    opened_at: float
    deadline: float
    updated_at: float
    resolved_at: float | None = None
    resolution: str | None = None
    fine_cents: int = 0
    proof: str | None = None
    evidence: str | None = None
    appealed_at: float | None = None


def case_from_row(row: Iterable[Any]) -> Case:
    """A case from a row selected as CASE_COLUMNS (the report comes back as bytes)."""
    values = list(row)
    values[7] = bytes(values[7])
    return Case(*values)


def case_row(case: Case) -> tuple[object, ...]:
    """A case's column values in the order of CASE_COLUMNS (both backends)."""
    return tuple(getattr(case, name.strip()) for name in CASE_COLUMNS.split(","))


@dataclass(frozen=True)
class CaseEvent:
    """One step in a case's history."""

    case_id: str
    action: str
    status: CaseStatus
    detail: str
    actor: str
    at: float


@dataclass(frozen=True)
class CaseChange:
    """A move of a case to `status`, with what comes with it (None leaves a field as it is)."""

    status: CaseStatus
    action: str
    actor: str
    detail: str = ""
    resolution: str | None = None
    fine_cents: int | None = None
    proof: str | None = None
    evidence: str | None = None
    appealed: bool = False
    resolved: bool = False


@dataclass(frozen=True)
class SentRecipient:
    """One recipient of a spooled message, as feedback attribution needs it."""

    recipient_id: int
    message_id: str
    account_id: str | None
    recipient: str
    kind: MessageKind
    received_at: float
    status: str
    campaign: str | None = None


SubscriptionStatus = Literal["pending", "confirmed"]


@dataclass(frozen=True)
class Subscription:
    """A request to join a list through the confirmed opt-in flow, and its confirmation."""

    token_hash: str  # SHA-256 of the confirmation token: the store never holds the token
    account_id: str
    list_id: str
    address: str
    status: SubscriptionStatus
    created_at: float
    expires_at: float
    ip: str | None
    user_agent: str | None
    form_url: str
    consent_text_version: str
    consent_text: str
    confirmed_at: float | None = None
    confirm_ip: str | None = None
    confirm_user_agent: str | None = None


def subscription_row(item: Subscription) -> tuple[object, ...]:
    """A subscription's column values in the order of SUBSCRIPTION_COLUMNS."""
    return tuple(getattr(item, name.strip()) for name in SUBSCRIPTION_COLUMNS.split(","))


@dataclass(frozen=True)
class Confirmation:
    """What confirming a subscription records: who clicked, and the opt-in record it makes."""

    now: float
    ip: str | None
    user_agent: str | None
    consent: Consent  # the record to write (method confirmed, both steps)
    actor: str  # for the suppression audit trail when an unsubscribe is lifted


@dataclass(frozen=True)
class TermsAcceptance:
    """An account's acceptance of one version of the terms of use."""

    account_id: str
    version: str
    accepted_at: float
    accepted_by: str  # who: a CLI user, or `web:` and the account contact
    ip: str | None = None
    user_agent: str | None = None


QueueState = Literal["active", "deferred", "held", "queued"]
QUEUE_STATES: tuple[QueueState, ...] = ("active", "deferred", "held", "queued")


@dataclass(frozen=True)
class QueueEntry:
    """A recipient still in the queue, as the `queue list` command shows it.

    Its state: `held` (its message is on hold), `active` (leased by a delivery now),
    `deferred` (tried, waiting for its next try), `queued` (not tried yet).
    """

    message_id: str
    recipient: str
    account_id: str | None
    mail_from: str
    attempts: int
    next_attempt: float
    last_reply: str | None
    state: QueueState = "queued"
    received_at: float = 0.0


@dataclass(frozen=True)
class QueuedRecipient:
    """One recipient of a message in the queue, whatever its status."""

    recipient: str
    status: str  # pending, delivered, failed, deleted
    attempts: int
    next_attempt: float
    last_reply: str | None
    leased_until: float
    dsn: str | None = None  # its NOTIFY and ORCPT, as stored


@dataclass(frozen=True)
class QueuedMessage:
    """A message as `queue show` prints it: envelope, recipients, content while pending."""

    id: str
    account_id: str | None
    mail_from: str
    kind: MessageKind
    size: int
    received_at: float
    completed_at: float | None
    held_at: float | None
    content: bytes | None
    recipients: tuple[QueuedRecipient, ...]
    dsn: str | None = None  # its RET and ENVID, as stored


@dataclass(frozen=True)
class QueueAction:
    """An operator's change to the queue (hold, release, retry, delete), for the audit trail.

    `message_id` names one message; a change of a whole account or of the whole queue is one
    row with `message_id` None and `account_id` (None: every account).
    """

    at: float
    actor: str
    action: Literal["hold", "release", "retry", "delete", "delete_dsn"]
    reason: str | None
    message_id: str | None = None
    account_id: str | None = None
    count: int = 0


JournalKind = Literal["mail", "rcpt", "data", "render", "replay"]


@dataclass(frozen=True)
class JournalEntry:
    """One decision about a message, kept for `explain` and `policy replay` (relay.journal)."""

    message_id: str
    at: float
    kind: JournalKind
    account_id: str | None
    detail: Mapping[str, Any]
    recipient: str | None = None
    id: int = 0  # assigned by the store

    def detail_json(self) -> str:
        """The detail as stored."""
        return json.dumps(self.detail, separators=(",", ":"), sort_keys=True, default=str)


def render_journal(job: DeliveryJob, status: str, now: float) -> list[JournalEntry]:
    """The journal entry of one attempt's copy: what the render did, and how the attempt ended.

    None when the job carries no render notes (the journal is off, or the copy was not made).
    """
    if job.render is None:
        return []
    detail = {"attempt": job.attempts + 1, "status": status, **job.render}
    return [JournalEntry(job.message_id, now, "render", job.account_id, detail, job.recipient)]


def queue_audit(
    action: QueueAction, message_ids: list[str] | None, account_id: str | None, count: int
) -> list[QueueAction]:
    """The audit rows of a queue change: one per named message, else one for its scope.

    Named messages of which none changed give no row; the scope is an account or the queue.
    """
    if message_ids is not None:
        return [replace(action, message_id=mid, account_id=None, count=0) for mid in message_ids]
    return [replace(action, account_id=account_id, count=count)]


def journal_from_row(row: Iterable[Any]) -> JournalEntry:
    """A `JournalEntry` from the columns of sql.JOURNAL_COLUMNS."""
    entry_id, message_id, at, kind, account_id, detail, recipient = row
    return JournalEntry(
        message_id, float(at), kind, account_id, json.loads(detail), recipient, int(entry_id)
    )


def queued_message_from_rows(
    head: Iterable[Any], recipients: Iterable[Iterable[Any]]
) -> QueuedMessage:
    """A `QueuedMessage` from its message row (sql.QUEUED_MESSAGE_COLUMNS) and recipient rows."""
    mid, account, mail_from, kind, size, received, completed, held, content, dsn = head
    return QueuedMessage(
        mid,
        account,
        mail_from,
        kind,
        size,
        received,
        completed,
        held,
        None if content is None else bytes(content),
        tuple(QueuedRecipient(*tuple(row)) for row in recipients),
        dsn,
    )


def by_day(rows: Iterable[Iterable[Any]]) -> dict[str, dict[float, dict[str, int]]]:
    """Rows of (account, day, kind, sum) as account -> day -> kind -> sum."""
    result: dict[str, dict[float, dict[str, int]]] = {}
    for account, day, kind, total in rows:
        result.setdefault(account, {}).setdefault(float(day), {})[kind] = int(total)
    return result


def repeat_rows(message: NewMessage) -> list[tuple[str, str, str, float]]:
    """The copies an account's message adds to the repeat counts (account, campaign, rcpt, at)."""
    if message.kind != "message" or message.account_id is None or message.campaign is None:
        return []
    return [
        (message.account_id, message.campaign, rcpt.lower(), message.received_at)
        for rcpt in dict.fromkeys(message.recipients)
    ]
