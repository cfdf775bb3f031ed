"""Feedback intake: every complaint and bounce ends here (SMTP, the CLI or the admin endpoint).

A complaint is attributed to an account and recipient from what the relay put into the message
(the trace header, the bounce address, the https or mailto unsubscribe token, the queue id in its
Received field); reports without those markers are attributed by their From domain only from
trusted sources (CLI, HTTP) or when `feedback.attribute_by_from_domain` is set. Then the
recipient is suppressed, a case opened (or dismissed at once on a confirmed opt-in record) and
the account's complaint rate checked. A complaint from someone suppressed before the send
terminates the account. A bounce (to bounce+TOKEN@) suppresses on a hard failure and is counted
either way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from email.utils import getaddresses
from typing import TYPE_CHECKING, Literal

from relay.accounts.standing import change_state
from relay.accounts.stats import check_rate
from relay.consent.optout import OptOut, opt_out
from relay.feedback import cases
from relay.feedback.reports import ComplaintReport, bounce_class, read_complaint, read_dsn
from relay.logging import get_logger
from relay.mail import markers
from relay.metrics import FEEDBACK_REPORTS
from relay.storage.events import bounce_event
from relay.storage.records import GLOBAL_SCOPE, Case, new_case_id, normalize_address

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.clock import Clock
    from relay.config import Config
    from relay.feedback.reports import BounceClass
    from relay.runtime import Context
    from relay.storage.base import Store
    from relay.storage.records import AccountStateName, SentRecipient
    from relay.tokens import TokenCodec

log = get_logger(__name__)
Source = Literal["fbl", "abuse", "cli", "http"]
Outcome = Literal["case", "dismissed", "suppress", "count", "ignore", "duplicate", "malformed"]
MAX_STORED_REPORT = 256 * 1024


@dataclass(frozen=True)
class Attribution:
    """Which account's mail to which recipient a report is about, and how that was found."""

    account_id: str
    recipient: str
    how: str  # trace | bounce_address | unsubscribe_token | queue_id | from_domain
    message_id: str | None = None
    sent_at: float | None = None


@dataclass(frozen=True)
class IntakeResult:
    """What one report did."""

    outcome: Outcome
    cause: str
    case_id: str | None = None
    account_id: str | None = None
    recipient: str | None = None


def _single_address(values: list[str]) -> str | None:
    addresses = {a.lower() for _, a in getaddresses(values) if "@" in a and "." in a.split("@")[-1]}
    return addresses.pop() if len(addresses) == 1 else None


class Feedback:
    """Turns reports into suppressions, cases, statistics and account decisions."""

    def __init__(
        self,
        store: Store,
        runtime: Callable[[], Context],
        clock: Clock,
        on_spooled: Callable[[], None] = lambda: None,
    ) -> None:
        """Act on `store` with the current runtime's config and tokens."""
        self.store = store
        self.runtime = runtime
        self.clock = clock
        self.on_spooled = on_spooled

    # --- attribution ---

    @staticmethod
    def _from_sent(sent: SentRecipient | None, how: str) -> Attribution | None:
        if sent is None or sent.kind != "message" or sent.account_id is None:
            return None
        return Attribution(sent.account_id, sent.recipient, how, sent.message_id, sent.received_at)

    async def _by_recipient_id(self, text: str, tokens: TokenCodec) -> Attribution | None:
        """From a token naming the spooled recipient: trace header, bounce or mailto address."""
        for find, verify, how in (
            (markers.trace_tokens, tokens.verify_trace, "trace"),
            (markers.bounce_tokens, tokens.verify_trace, "bounce_address"),
            (markers.unsubscribe_tokens, tokens.verify_unsubscribe_address, "unsubscribe_token"),
        ):
            for token in find(text):
                recipient_id = verify(token)
                if recipient_id is not None:
                    found = self._from_sent(await self.store.sent(recipient_id), how)
                    if found is not None:
                        return found
        return None

    async def attribute(self, report: ComplaintReport, *, trusted: bool) -> Attribution | None:
        """Find the account and recipient a report is about (see the module docstring)."""
        runtime = self.runtime()
        config, tokens = runtime.config, runtime.tokens
        text = report.enclosed_text
        found = await self._by_recipient_id(text, tokens)
        if found is not None:
            return found
        for token in markers.unsubscribe_tokens(text):
            claim = tokens.verify(token)
            if claim is not None and config.account(claim.account_id) is not None:
                return Attribution(claim.account_id, claim.recipient, "unsubscribe_token")
        rcpts = {normalize_address(r) for r in report.original_rcpt_to}
        for queue_id in markers.queue_ids(text):
            sent = [s for s in await self.store.sent_in_message(queue_id) if s.kind == "message"]
            match = [s for s in sent if normalize_address(s.recipient) in rcpts]
            if len(match) == 1 or (not match and len(sent) == 1):
                return self._from_sent((match or sent)[0], "queue_id")
        if trusted or config.feedback.attribute_by_from_domain:
            return self._by_from_domain(report, config)
        return None

    def _by_from_domain(self, report: ComplaintReport, config: Config) -> Attribution | None:
        enclosed = report.enclosed
        if enclosed is None:
            return None
        sender = _single_address(enclosed.get_all("From") or [])
        if sender is None:
            return None
        domain = sender.rpartition("@")[2]
        account = config.account_for_domain(domain)
        if account is None:
            return None
        recipient = _single_address(list(report.original_rcpt_to)) or _single_address(
            enclosed.get_all("To") or []
        )
        if recipient is None:
            return None
        return Attribution(account.id, recipient, "from_domain")

    # --- complaints ---

    async def complaint(self, content: bytes, *, source: Source, trusted: bool) -> IntakeResult:
        """Act on a complaint report or forwarded message; never raises for bad input."""
        result = await self._complaint(content, source=source, trusted=trusted)
        FEEDBACK_REPORTS.labels("complaint", result.outcome).inc()
        return result

    async def _complaint(self, content: bytes, *, source: Source, trusted: bool) -> IntakeResult:
        try:
            report = read_complaint(content)
        except Exception as exc:  # noqa: BLE001 - untrusted input must never crash the intake
            log.warning("complaint_malformed", source=source, cause=f"unreadable: {exc!r}")
            return IntakeResult("malformed", "unreadable message")
        fields: dict[str, object] = {
            "source": source,
            "report_id": report.report_id,
            "cause": report.cause,
        }
        if report.kind == "malformed":
            log.warning("complaint_malformed", **fields)
            return IntakeResult("malformed", report.cause)
        if report.kind in ("not_complaint", "auto_reply") or (
            report.kind == "no_report" and not report.enclosed_text
        ):
            log.info("complaint_ignored", kind=report.kind, **fields)
            return IntakeResult("ignore", report.cause)
        attribution = await self.attribute(report, trusted=trusted)
        if attribution is None:
            cause = "no enclosed message" if report.kind == "no_report" else "not attributable"
            log.info("complaint_unattributed", kind=report.kind, **{**fields, "cause": cause})
            return IntakeResult("ignore", cause)
        fields |= {
            "account_id": attribution.account_id,
            "recipient": attribution.recipient,
            "attributed_by": attribution.how,
            "original_message_id": attribution.message_id,
        }
        if report.kind == "unsubscribe":
            return await self._opt_out(report, attribution, fields)
        return await self._open_case(report, attribution, content, source, fields)

    async def _opt_out(
        self, report: ComplaintReport, attribution: Attribution, fields: dict[str, object]
    ) -> IntakeResult:
        config, now = self.runtime().config, self.clock.now()
        scope = (
            GLOBAL_SCOPE if config.feedback.complaint_scope == "global" else attribution.account_id
        )
        out = OptOut(
            attribution.recipient,
            attribution.account_id,
            scope,
            "unsubscribe",
            "fbl:opt-out",
            "feedback:opt-out",
            withdraw="fbl",
            stat="unsubscribe",
        )
        added = await opt_out(self.store, out, now=now)
        log.info("unsubscribed", method="fbl", scope=scope, new=added, **fields)
        return IntakeResult(
            "suppress", report.cause, None, attribution.account_id, attribution.recipient
        )

    async def _open_case(
        self,
        report: ComplaintReport,
        attribution: Attribution,
        content: bytes,
        source: Source,
        fields: dict[str, object],
    ) -> IntakeResult:
        config, now = self.runtime().config, self.clock.now()
        account_id, recipient = attribution.account_id, normalize_address(attribution.recipient)
        prior = await self.store.suppressed(recipient, account_id)
        scope = GLOBAL_SCOPE if config.feedback.complaint_scope == "global" else account_id
        reference = (
            attribution.message_id or report.report_id or hashlib.sha256(content).hexdigest()
        )
        case = Case(
            id=new_case_id(),
            account_id=account_id,
            recipient=recipient,
            reference=reference,
            message_id=attribution.message_id,
            source=source,
            feedback_type=report.feedback_type,
            report=content[:MAX_STORED_REPORT],
            status="open",
            opened_at=now,
            deadline=now + config.feedback.proof_deadline,
            updated_at=now,
        )
        out = OptOut(
            recipient,
            account_id,
            scope,
            "complaint",
            f"{source}:{report.feedback_type}",
            f"feedback:{source}",
            withdraw="complaint",
            stat="complaint",
            count_repeats=True,
            case_id=case.id,
        )
        if not await self.store.open_case(case):
            # A report seen before: the suppression stands, nothing is counted twice.
            await opt_out(self.store, replace(out, withdraw=None, stat=None), now=now)
            log.info("complaint_duplicate", reference=reference, **fields)
            return IntakeResult("duplicate", "already recorded", None, account_id, recipient)
        await opt_out(self.store, out, now=now)
        log.warning(
            "complaint_received", case_id=case.id, feedback_type=report.feedback_type, **fields
        )
        proof = await cases.find_proof(self.store, account_id, recipient, attribution.sent_at)
        if proof is not None:
            await cases.dismiss_with_proof(self.store, config, case, proof, now=now)
            outcome: Outcome = "dismissed"
        else:
            await cases.ask_for_proof(self.store, config, case, now=now)
            outcome = "case"
        self.on_spooled()
        if (
            prior is not None
            and attribution.sent_at is not None
            and prior.created_at < attribution.sent_at
        ):
            await self._after_suppression(case, prior.reason, prior.created_at, now=now)
        else:
            await check_rate(self.store, config, account_id, "complaint_rate", now=now)
        return IntakeResult(outcome, report.cause, case.id, account_id, recipient)

    async def _after_suppression(
        self, case: Case, reason: str, since: float, *, now: float
    ) -> None:
        """A complaint from someone the account had been told to stop mailing."""
        config = self.runtime().config
        state: AccountStateName = (
            "terminated" if config.feedback.after_suppression == "terminate" else "suspended"
        )
        current = await self.store.account_state(case.account_id)
        if current is not None and current.state == "terminated":
            return
        log.warning(
            "complaint_after_suppression",
            case_id=case.id,
            account_id=case.account_id,
            recipient=case.recipient,
            suppressed_reason=reason,
            suppressed_at=since,
        )
        await change_state(
            self.store,
            case.account_id,
            state,
            reason=(
                f"complaint {case.id} from {case.recipient}, suppressed ({reason}) before the send"
            ),
            actor="feedback:after_suppression",
            now=now,
        )

    # --- bounces ---

    async def bounce(self, content: bytes, recipient_id: int) -> IntakeResult:
        """Act on a DSN that came back to bounce+TOKEN@ (the token names `recipient_id`)."""
        result = await self._bounce(content, recipient_id)
        FEEDBACK_REPORTS.labels("bounce", result.outcome).inc()
        return result

    async def _bounce(self, content: bytes, recipient_id: int) -> IntakeResult:
        sent = await self.store.sent(recipient_id)
        if sent is None:
            log.info("bounce_ignored", cause="unknown recipient id", recipient_id=recipient_id)
            return IntakeResult("ignore", "unknown recipient id")
        fields = {
            "account_id": sent.account_id,
            "recipient": sent.recipient,
            "original_message_id": sent.message_id,
        }
        try:
            entries = read_dsn(content)
        except Exception as exc:  # noqa: BLE001 - untrusted input must never crash the intake
            log.info("bounce_ignored", cause=f"unreadable: {exc!r}", **fields)
            return IntakeResult("ignore", "unreadable", None, sent.account_id, sent.recipient)
        if entries is None:
            log.info("bounce_ignored", cause="not a delivery status notification", **fields)
            return IntakeResult("ignore", "not a DSN", None, sent.account_id, sent.recipient)
        address = normalize_address(sent.recipient)
        about = [e for e in entries if address in (e.final_recipient, e.original_recipient)]
        classes = [bounce_class(e) for e in (about or entries)]
        worst: BounceClass = (
            "hard" if "hard" in classes else "soft" if "soft" in classes else "none"
        )
        if worst == "none":
            log.info("bounce_ignored", cause="no failed or delayed recipient", **fields)
            return IntakeResult("ignore", "no failure", None, sent.account_id, sent.recipient)
        entry = (about or entries)[classes.index(worst)]
        now = self.clock.now()
        fields |= {"action": entry.action, "status": entry.status, "diagnostic": entry.diagnostic}
        counted = sent.kind == "message" and sent.account_id is not None
        if worst == "soft":
            if counted:
                await self.store.add_stats([(str(sent.account_id), "soft_bounce", now, 1)])
                soft = bounce_event(
                    str(sent.account_id),
                    sent.recipient,
                    message_id=sent.message_id,
                    status=entry.status,
                    diagnostic=entry.diagnostic,
                    now=now,
                )
                await self.store.record_events([soft])
            log.info("bounce_soft", **fields)
            return IntakeResult("count", "soft bounce", None, sent.account_id, sent.recipient)
        scope = sent.account_id or GLOBAL_SCOPE
        account_id = sent.account_id if counted else None
        out = OptOut(
            address,
            account_id,
            scope,
            "bounce",
            f"dsn:{entry.status}",
            "feedback:dsn",
            withdraw=None,  # the address failed; its owner did not withdraw anything
            stat="bounce",
            count_repeats=True,
        )
        await opt_out(self.store, out, now=now)
        log.warning("bounce_hard", scope=scope, **fields)
        if account_id is not None:
            await check_rate(self.store, self.runtime().config, account_id, "bounce_rate", now=now)
        return IntakeResult("suppress", "hard bounce", None, sent.account_id, sent.recipient)
