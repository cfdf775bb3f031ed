"""The SMTP replies the relay gives of its own, and the one way a refusal is logged and counted."""

from __future__ import annotations

from relay.logging import get_logger
from relay.metrics import REJECTIONS

log = get_logger(__name__)

REPLY_AUTH_REQUIRED = "530 5.7.0 Authentication required"
REPLY_THROTTLED = "421 4.7.0 Too many failed authentication attempts, try again later"
REPLY_TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address, try again later"
REPLY_TEMPFAIL = "451 4.3.0 Temporary local problem, try again later"
REPLY_NEED_RCPT = "503 5.5.1 Error: need RCPT command"


def rejected(stage: str, reply: str, rule: str, **fields: object) -> None:
    """A transaction refused at MAIL or DATA: one `message_rejected` event, one count."""
    REJECTIONS.labels(stage, rule).inc()
    log.info("message_rejected", stage=stage, code=int(reply[:3]), rule=rule, reply=reply, **fields)


def recipient_rejected(reply: str, rule: str, recipient: str, stage: str = "rcpt") -> None:
    """One recipient refused at RCPT (or alone at DATA): one `recipient_rejected` line, a count."""
    REJECTIONS.labels(stage, rule).inc()
    log.info(
        "recipient_rejected",
        stage=stage,
        code=int(reply[:3]),
        rule=rule,
        reply=reply,
        recipient=recipient,
    )
