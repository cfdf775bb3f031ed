"""Mail to the relay's own addresses at the inbound domain, open to anyone.

`unsub+TOKEN` (RFC 2369 mailto unsubscribe), `bounce+TOKEN` (DSNs to the VERP envelope sender)
and the complaint mailboxes `fbl@`, `abuse@` and `postmaster@`. Each is checked at RCPT (a
forged token gets 550) and acted on at DATA, before 250; what the store cannot take now is
deferred with 451.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.consent.optout import mailto_claim, unsubscribe
from relay.errors import StoreError
from relay.logging import get_logger
from relay.mail import markers
from relay.smtp.replies import REPLY_TEMPFAIL, recipient_rejected, rejected

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.clock import Clock
    from relay.feedback.intake import Feedback, Source
    from relay.runtime import Runtime
    from relay.smtp.session import InboundParts
    from relay.storage.base import Store

log = get_logger(__name__)


class InboundMail:
    """The relay's own mailboxes: unsubscribes, bounces and complaint reports."""

    def __init__(
        self, *, runtime: Callable[[], Runtime], store: Store, clock: Clock, feedback: Feedback
    ) -> None:
        """Act through the unsubscribe action and the feedback intake."""
        self.runtime = runtime
        self.store = store
        self.clock = clock
        self.feedback = feedback

    async def rcpt(self, parts: InboundParts, address: str, local: str) -> str:  # noqa: PLR0911
        """Accept one of the relay's own addresses into `parts`, or refuse it."""
        lower = local.lower()
        if lower in markers.COMPLAINT_BOXES:
            parts.complaint_boxes.append(lower)
            return "250 2.1.5 Complaint address ok"
        tokens = self.runtime().tokens
        bounce = markers.bounce_token(local)
        if bounce is not None:
            recipient_id = tokens.verify_trace(bounce)
            if recipient_id is None:
                reply = f"550 5.1.1 <{address}>: invalid bounce address"
                recipient_rejected(reply, "inbound_invalid_token", address)
                return reply
            parts.bounces.append(recipient_id)
            return "250 2.1.5 Bounce address ok"
        token = markers.unsubscribe_token(local)
        if token is not None:
            try:
                claim = await mailto_claim(self.store, tokens, token)
            except StoreError as exc:
                log.error("unsubscribe_failed", method="mailto", error=str(exc))
                recipient_rejected(REPLY_TEMPFAIL, "unsubscribe_store", address)
                return REPLY_TEMPFAIL
            if claim is None:
                reply = f"550 5.1.1 <{address}>: invalid or expired unsubscribe address"
                recipient_rejected(reply, "inbound_invalid_token", address)
                return reply
            parts.unsubscribes.append(claim)
            return "250 2.1.5 Unsubscribe address ok"
        reply = f"550 5.1.1 <{address}>: no such inbound address"
        recipient_rejected(reply, "inbound_unknown", address)
        return reply

    async def data(self, parts: InboundParts, content: bytes) -> str:
        """Record the unsubscribes, then act on DSNs and complaint reports; 250 once done."""
        if parts.unsubscribes:
            config = self.runtime().config
            try:
                for claim in parts.unsubscribes:
                    await unsubscribe(
                        self.store, config, claim, method="mailto", now=self.clock.now()
                    )
            except StoreError as exc:
                log.error("unsubscribe_failed", method="mailto", error=str(exc))
                rejected("data", REPLY_TEMPFAIL, "unsubscribe_store")
                return REPLY_TEMPFAIL
        if parts.complaint_boxes or parts.bounces:
            return await self._feedback(parts, content)
        return "250 2.0.0 Unsubscribe recorded"

    async def _feedback(self, parts: InboundParts, content: bytes) -> str:
        """Act on a DSN or complaint report mailed to the relay, before answering 250.

        A malformed feedback report is refused (RFC 6650 section 4.5 still wants unknown
        feedback types accepted); anything the store cannot take now is deferred (4xx).
        """
        try:
            for recipient_id in parts.bounces:
                await self.feedback.bounce(content, recipient_id)
            if parts.complaint_boxes:
                source: Source = "fbl" if "fbl" in parts.complaint_boxes else "abuse"
                result = await self.feedback.complaint(content, source=source, trusted=False)
                if result.outcome == "malformed":
                    reply = f"550 5.6.0 Malformed feedback report: {result.cause}"
                    rejected("data", reply, "complaint_malformed")
                    return reply
        except StoreError as exc:
            log.error("feedback_failed", error=str(exc))
            rejected("data", REPLY_TEMPFAIL, "feedback_store")
            return REPLY_TEMPFAIL
        return "250 2.0.0 Feedback recorded"
