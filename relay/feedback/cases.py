"""Complaint cases: the one place that moves a case and tells the account.

A case opens `open`, moves to `awaiting_proof` when the notice to the account's contact is
spooled, and ends `dismissed` (a confirmed opt-in record, attached as proof, or an operator's
decision after an appeal) or `upheld` (by an operator, or automatically when the deadline passes
without proof), with the configured fine. Upheld cases count towards suspending the account.
Notices go out through the relay itself (spooled, signed for the relay's own domain).
"""

from __future__ import annotations

from email.utils import format_datetime
from typing import TYPE_CHECKING, Literal

from relay.accounts import terms
from relay.accounts.abuse import halt
from relay.clock import to_datetime
from relay.logging import get_logger
from relay.mail.compose import relay_mail
from relay.metrics import CASES
from relay.storage.records import CaseChange

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.config import Config
    from relay.storage.base import Store
    from relay.storage.records import Case, CaseStatus

log = get_logger(__name__)
Decision = Literal["uphold", "dismiss"]
NoticeKind = Literal["opened", "dismissed", "upheld"]
MAX_EVIDENCE = 64 * 1024


class CaseError(Exception):
    """A case operation that cannot be done (unknown case, wrong state); the text says why."""


def _when(at: float) -> str:
    return format_datetime(to_datetime(at))


async def find_proof(
    store: Store, account_id: str, recipient: str, sent_at: float | None
) -> str | None:
    """A description of the confirmed opt-in record that covers the send, if there is one."""
    records = await store.consents(account_id=account_id, address=recipient)
    for record in records + await store.consent_history(account_id, recipient):
        if record.method != "confirmed" or record.confirmed_at is None:
            continue
        if sent_at is not None and record.confirmed_at > sent_at:
            continue  # confirmed only after the reported send
        if (
            sent_at is not None
            and record.withdrawn_at is not None
            and record.withdrawn_at < sent_at
        ):
            continue  # withdrawn before the reported send
        return (
            f"confirmed opt-in record: list {record.list_id}, subscribed"
            f" {_when(record.subscribed_at)}, confirmed {_when(record.confirmed_at)},"
            f" source {record.source}, ip {record.ip or '-'},"
            f" consent text {record.consent_text_version or '-'}"
        )
    return None


def assess_fine(config: Config, feedback_type: str) -> tuple[int, str]:
    """The fine for an upheld case of `feedback_type`, in cents, and how it was found."""
    feedback = config.feedback
    if feedback_type in feedback.fines:
        base = feedback.fines[feedback_type]
        how = f"feedback.fines.{feedback_type} {base:.2f} USD"
    else:
        base = feedback.fine
        how = f"feedback.fine {base:.2f} USD (feedback.fines names no {feedback_type!r})"
    amount = min(base, feedback.max_fine)
    if amount < base:
        how += f", capped at feedback.max_fine {feedback.max_fine:.2f} USD"
    return round(amount * 100), f"fine {amount:.2f} USD for a {feedback_type} complaint: {how}"


def _notice_text(config: Config, case: Case, kind: NoticeKind) -> tuple[str, str]:
    """Subject and body of a notice to the account."""
    subject = {
        "opened": f"Spam complaint {case.id}: opt-in record required",
        "dismissed": f"Spam complaint {case.id}: dismissed",
        "upheld": f"Spam complaint {case.id}: upheld",
    }[kind]
    lines = [
        f"A spam complaint was lodged about mail your account {case.account_id} sent",
        f"through {config.hostname}.",
        "",
        f"  Case:        {case.id}",
        f"  Recipient:   {case.recipient}",
        f"  Message:     {case.message_id or case.reference}",
        f"  Report type: {case.feedback_type} (via {case.source})",
        f"  Opened:      {_when(case.opened_at)}",
        "",
        "The recipient has been suppressed: mail to them is refused from now on.",
        "",
    ]
    fine, how = assess_fine(config, case.feedback_type)
    if kind == "opened":
        lines += [
            "Please send the opt-in record for this recipient (when, how and from where they",
            f"subscribed, and what they were told) by {_when(case.deadline)}, replying to this",
            "mail or through your abuse desk contact. Without proof by then the complaint is",
            f"upheld and a fine of {fine / 100:.2f} USD is assessed.",
        ]
    elif kind == "dismissed":
        lines += ["The complaint was dismissed:", f"  {case.proof or case.resolution or ''}"]
    else:
        lines += [
            f"The complaint was upheld ({case.resolution or 'no proof of permission'}).",
            f"A fine of {case.fine_cents / 100:.2f} USD has been assessed",
            f"({how.partition(': ')[2]}).",
            "Repeated upheld complaints lead to suspension of the account.",
        ]
    return subject, "\n".join(lines) + "\n"


async def fines_by_account(
    store: Store, *, since: float, account_id: str | None = None
) -> dict[str, int]:
    """The fines of upheld cases opened since `since`, in cents, per account."""
    totals: dict[str, int] = {}
    for case in await store.cases(
        account_id=account_id, status="upheld", since=since, limit=100_000
    ):
        totals[case.account_id] = totals.get(case.account_id, 0) + case.fine_cents
    return totals


async def send_notice(
    store: Store, config: Config, case: Case, kind: NoticeKind, *, now: float
) -> str | None:
    """Spool a notice about `case` to its account's contact; the notice's queue id or None."""
    account = config.account(case.account_id)
    if account is None or not account.contact:
        log.warning("case_notice_undeliverable", case_id=case.id, account_id=case.account_id)
        return None
    sender = config.feedback.notice_from or f"abuse@{config.relay_domain}"
    subject, body = _notice_text(config, case, kind)
    if kind == "opened" and config.terms is not None:
        quoted = terms.quote(config, await store.terms_accepted(case.account_id))
        body += "\n" + "\n".join(quoted) + "\n"
    message = relay_mail(
        config,
        account_id=case.account_id,
        sender=(f"{config.hostname} abuse desk", sender),
        to=account.contact,
        subject=subject,
        text=body,
        headers={"X-Optin-Relay-Case": case.id},
        now=now,
    )
    await store.spool(message)
    log.info("case_notice_queued", case_id=case.id, notice=kind, message_id=message.id)
    return message.id


async def _get(store: Store, case_id: str) -> Case:
    case = await store.case(case_id)
    if case is None:
        raise CaseError(f"no case {case_id}")
    return case


async def _move(
    store: Store, case: Case, change: CaseChange, expect: tuple[CaseStatus, ...], now: float
) -> Case:
    if not await store.change_case(case.id, change, expect=expect, now=now):
        current = await _get(store, case.id)
        raise CaseError(f"case {case.id} is {current.status}, not {' or '.join(expect)}")
    return await _get(store, case.id)


async def ask_for_proof(store: Store, config: Config, case: Case, *, now: float) -> Case:
    """Tell the account about the new case and wait for its opt-in record until the deadline."""
    notice = await send_notice(store, config, case, "opened", now=now)
    detail = f"notice {notice} queued" if notice else "no contact to notify"
    change = CaseChange("awaiting_proof", "notice", "feedback", detail)
    return await _move(store, case, change, ("open",), now)


async def appeal(store: Store, case_id: str, evidence: str, *, actor: str, now: float) -> Case:
    """Attach the account's evidence; the case then waits for an operator (no auto-uphold)."""
    case = await _get(store, case_id)
    text = evidence[:MAX_EVIDENCE]
    change = CaseChange(
        "awaiting_proof",
        "appeal",
        actor,
        f"{len(text)} characters of evidence",
        evidence=text,
        appealed=True,
    )
    case = await _move(store, case, change, ("open", "awaiting_proof"), now)
    log.info("case_appealed", case_id=case.id, account_id=case.account_id, actor=actor)
    CASES.labels("appealed").inc()
    return case


async def resolve(
    store: Store,
    config: Config,
    case_id: str,
    decision: Decision,
    *,
    actor: str,
    reason: str,
    now: float,
) -> Case:
    """Dismiss or uphold (with the fine) an open case; tell the account."""
    case = await _get(store, case_id)
    if decision == "dismiss":
        change = CaseChange("dismissed", "dismiss", actor, reason, resolution=reason, resolved=True)
    else:
        cents, how = assess_fine(config, case.feedback_type)
        change = CaseChange(
            "upheld",
            "uphold",
            actor,
            f"{reason}; {how}",
            resolution=reason,
            fine_cents=cents,
            resolved=True,
        )
    case = await _move(store, case, change, ("open", "awaiting_proof"), now)
    await _resolved(store, config, case, now=now)
    return case


async def dismiss_with_proof(
    store: Store, config: Config, case: Case, proof: str, *, now: float
) -> Case:
    """Dismiss a case on the confirmed opt-in record found for it."""
    change = CaseChange(
        "dismissed",
        "dismiss",
        "feedback:proof",
        proof,
        resolution="confirmed opt-in record on file",
        proof=proof,
        resolved=True,
    )
    case = await _move(store, case, change, ("open", "awaiting_proof"), now)
    await _resolved(store, config, case, now=now)
    return case


async def _resolved(store: Store, config: Config, case: Case, *, now: float) -> None:
    fields = {"case_id": case.id, "account_id": case.account_id, "recipient": case.recipient}
    CASES.labels(case.status).inc()
    if case.status == "dismissed":
        log.info("case_dismissed", resolution=case.resolution, **fields)
        await send_notice(store, config, case, "dismissed", now=now)
        return
    log.warning("case_upheld", resolution=case.resolution, fine_cents=case.fine_cents, **fields)
    await send_notice(store, config, case, "upheld", now=now)
    window = config.feedback.upheld_window
    upheld = await store.cases(account_id=case.account_id, status="upheld", since=now - window)
    if len(upheld) >= config.feedback.upheld_cases:
        await halt(
            store,
            case.account_id,
            "upheld_cases",
            count=len(upheld),
            threshold=config.feedback.upheld_cases - 1,
            now=now,
        )


async def sweep(store: Store, config_of: Callable[[], Config], *, now: float) -> list[str]:
    """Uphold every case whose deadline passed without proof; return their ids."""
    upheld: list[str] = []
    for case in await store.due_cases(now):
        try:
            await resolve(
                store,
                config_of(),
                case.id,
                "uphold",
                actor="feedback:deadline",
                reason="no proof of permission by the deadline",
                now=now,
            )
        except CaseError:
            continue  # appealed or resolved meanwhile
        upheld.append(case.id)
    return upheld
