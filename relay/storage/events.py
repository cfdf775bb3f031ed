"""The events outbox: one record per fact about an account's mail, written with the fact.

The store writes each event in the same transaction as the fact it reports (a message spooled,
a copy delivered, an address suppressed, an account suspended), so an event exists exactly when
its fact does; a CRM reads them back in order (`GET /api/v1/events`). The facts that are not
themselves stored (a recipient refused at RCPT) are recorded on their own. The builders here are
shared by both backends, so an event's shape never depends on where it is stored.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from relay.storage.records import STAT_BUCKET, Event, NewEvent

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from relay.storage.records import (
        Case,
        CaseChange,
        Consent,
        DeliveryJob,
        NewMessage,
        Subscription,
        Suppression,
    )

# Every type the relay emits; `docs/events.md` documents each (a test keeps them in step).
EVENT_TYPES: tuple[str, ...] = (
    "message.accepted",
    "message.delivered",
    "message.deferred",
    "message.failed",
    "message.refused",
    "recipient.refused",
    "recipient.unsubscribed",
    "recipient.complained",
    "recipient.bounced",
    "suppression.added",
    "suppression.removed",
    "account.suspended",
    "account.reinstated",
    "account.terminated",
    "subscription.requested",
    "subscription.confirmed",
    "case.opened",
    "case.decided",
)
# How a suppression's reason shows as a recipient event (beside `suppression.added`).
_BY_REASON = {
    "unsubscribe": "recipient.unsubscribed",
    "complaint": "recipient.complained",
    "bounce": "recipient.bounced",
}
_STATUS = re.compile(r"^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})\b")
_BY_STATE = {
    "suspended": "account.suspended",
    "active": "account.reinstated",
    "terminated": "account.terminated",
}


# The account statistics an event counts, written in the event's own transaction (both
# backends' `insert_events`), so the counts are what the feed says, also after a crash.
_STAT_OF = {"message.delivered": "delivered", "recipient.refused": "refused"}


def event_stats(events: Iterable[NewEvent]) -> list[tuple[str, str, float, int]]:
    """The counts `events` add: (account, kind, hourly bucket, count), one row per key, sorted.

    Sorted, so concurrent writers take the rows' locks in one order (no deadlock).
    """
    counts: dict[tuple[str, str, float], int] = {}
    for event in events:
        kind = _STAT_OF.get(event.type)
        if kind is not None:
            key = (event.account_id, kind, event.at - event.at % STAT_BUCKET)
            counts[key] = counts.get(key, 0) + 1
    return [(a, k, b, n) for (a, k, b), n in sorted(counts.items())]


def stored_event(row: tuple[Any, ...], cursor: str) -> Event:
    """An `Event` from the columns id, type, account_id, at, message_id, recipient, data."""
    event_id, kind, account, at, message_id, recipient, data = row
    return Event(
        event_id, kind, account, float(at), message_id, recipient, json.loads(data), cursor
    )


def accepted_events(message: NewMessage) -> list[NewEvent]:
    """`message.accepted` for an account's message (not for the relay's own DSNs and notices)."""
    if message.kind != "message" or message.account_id is None:
        return []
    return [
        NewEvent(
            "message.accepted",
            message.account_id,
            message.received_at,
            message_id=message.id,
            data={
                "recipients": list(message.recipients),
                "mail_from": message.mail_from,
                "size": len(message.content),
            },
        )
    ]


def delivery_events(
    kind: str, job: DeliveryJob, reply: str, now: float, **data: object
) -> list[NewEvent]:
    """`message.delivered`, `.deferred` or `.failed` for one recipient of an account's message.

    A deferral or failure carries the enhanced status code of the reply (RFC 3463; 4.0.0 or
    5.0.0 when the reply has none) beside the reply itself, as its DSN does.
    """
    if job.kind != "message" or job.account_id is None:
        return []
    if kind != "delivered":
        found = _STATUS.match(reply)
        data["status"] = found.group(1) if found else ("4.0.0" if kind == "deferred" else "5.0.0")
    return [
        NewEvent(
            f"message.{kind}",
            job.account_id,
            now,
            message_id=job.message_id,
            recipient=job.recipient,
            data={"reply": reply, "attempt": job.attempts + 1, **data},
        )
    ]


def deleted_events(
    rows: Iterable[tuple[str, str, int]], accounts: Mapping[str, str], *, reply: str, now: float
) -> list[NewEvent]:
    """`message.failed` for each recipient an operator deleted from the queue.

    `rows`: (message id, recipient, attempts so far); `accounts`: the account of each message
    that is an account's (the relay's own DSNs and notices have no events).
    """
    return [
        NewEvent(
            "message.failed",
            accounts[message_id],
            now,
            message_id=message_id,
            recipient=recipient,
            data={"reply": reply, "attempt": attempts, "status": "5.0.0", "deleted": True},
        )
        for message_id, recipient, attempts in rows
        if message_id in accounts
    ]


def suppression_events(
    entry: Suppression,
    actor: str,
    account_id: str | None = None,
    details: dict[str, str] | None = None,
) -> list[NewEvent]:
    """`suppression.added`, and the recipient event its reason stands for.

    The events go to the suppression's account, or, for a global one, to the account whose
    mail led to it (`account_id`); a global suppression of the operator's own has none.
    """
    account = account_id or (None if entry.scope == "*" else entry.scope)
    if account is None:
        return []
    data: dict[str, Any] = {
        "reason": entry.reason,
        "source": entry.source,
        "actor": actor,
        "scope": entry.scope,
    }
    if entry.reason == "bounce":
        data["bounce"] = "hard"
    data |= details or {}
    events = [
        NewEvent("suppression.added", account, entry.created_at, recipient=entry.address, data=data)
    ]
    recipient_event = _BY_REASON.get(entry.reason)
    if recipient_event is not None:
        events.append(
            NewEvent(
                recipient_event, entry.scope, entry.created_at, recipient=entry.address, data=data
            )
        )
    return events


def unsuppression_events(
    address: str, scope: str, *, reason: str, actor: str, now: float
) -> list[NewEvent]:
    """`suppression.removed` for an account's suppression."""
    if scope == "*":
        return []
    return [
        NewEvent(
            "suppression.removed",
            scope,
            now,
            recipient=address,
            data={"reason": reason, "actor": actor},
        )
    ]


def account_state_events(
    account_id: str, state: str, *, reason: str, actor: str, now: float
) -> list[NewEvent]:
    """`account.suspended`, `.reinstated` or `.terminated`."""
    return [NewEvent(_BY_STATE[state], account_id, now, data={"reason": reason, "actor": actor})]


def refused_event(
    account_id: str,
    recipient: str,
    *,
    rule: str,
    reply: str,
    now: float,
    stage: str = "rcpt",
    message_id: str | None = None,
) -> NewEvent:
    """`recipient.refused`: one recipient refused at RCPT, or at DATA (with the message's id)."""
    return NewEvent(
        "recipient.refused",
        account_id,
        now,
        message_id=message_id,
        recipient=recipient,
        data={"stage": stage, "rule": rule, "reply": reply},
    )


def message_refused_event(
    account_id: str, message_id: str, *, mail_from: str, rule: str, reply: str, now: float
) -> NewEvent:
    """`message.refused`: a transaction refused at MAIL, before any recipient was named.

    A refusal at RCPT or DATA names its recipients: one `recipient.refused` each.
    """
    return NewEvent(
        "message.refused",
        account_id,
        now,
        message_id=message_id,
        data={"stage": "mail", "rule": rule, "reply": reply, "mail_from": mail_from},
    )


def subscription_events(item: Subscription) -> list[NewEvent]:
    """`subscription.requested`: a double opt-in started (the confirmation mail is on its way)."""
    data = {"list": item.list_id, "form_url": item.form_url, "ip": item.ip}
    return [
        NewEvent(
            "subscription.requested",
            item.account_id,
            item.created_at,
            recipient=item.address,
            data=data,
        )
    ]


def confirmation_events(
    record: Consent, *, ip: str | None, lifted: bool, now: float
) -> list[NewEvent]:
    """`subscription.confirmed`, and `suppression.removed` when it lifted an unsubscribe."""
    events = [
        NewEvent(
            "subscription.confirmed",
            record.account_id,
            now,
            recipient=record.address,
            data={
                "list": record.list_id,
                "ip": ip,
                "consent_text_version": record.consent_text_version,
            },
        )
    ]
    if lifted:
        events += unsuppression_events(
            record.address, record.account_id, reason="resubscribed", actor="subscriber", now=now
        )
    return events


def case_opened_events(case: Case) -> list[NewEvent]:
    """`case.opened`: a complaint against the account, with its deadline for proof."""
    return [
        NewEvent(
            "case.opened",
            case.account_id,
            case.opened_at,
            message_id=case.message_id,
            recipient=case.recipient,
            data={
                "case_id": case.id,
                "feedback_type": case.feedback_type,
                "source": case.source,
                "deadline": case.deadline,
            },
        )
    ]


def case_decided_events(
    case_id: str, row: tuple[Any, ...] | None, change: CaseChange, now: float
) -> list[NewEvent]:
    """`case.decided` when a change resolves the case (`row`: its account, recipient, message)."""
    if row is None or not change.resolved:
        return []
    account_id, recipient, message_id = row
    return [
        NewEvent(
            "case.decided",
            account_id,
            now,
            message_id=message_id,
            recipient=recipient,
            data={
                "case_id": case_id,
                "status": change.status,
                "resolution": change.resolution,
                "fine_cents": change.fine_cents,
            },
        )
    ]


def bounce_event(
    account_id: str,
    recipient: str,
    *,
    message_id: str | None,
    status: str,
    diagnostic: str,
    now: float,
) -> NewEvent:
    """`recipient.bounced` for a soft bounce (a hard one comes with its suppression)."""
    return NewEvent(
        "recipient.bounced",
        account_id,
        now,
        message_id=message_id,
        recipient=recipient,
        data={"bounce": "soft", "status": status, "diagnostic": diagnostic},
    )
