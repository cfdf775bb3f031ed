r"""Delivery status notifications (RFC 3464): the report sent to the envelope sender on failure.

An internationalised recipient (SMTPUTF8, RFC 6531) is named with the `utf-8` address type of
RFC 6533 in its 7-bit form (`\x{HEX}` for each character outside printable ASCII), so the
status part stays 7-bit; a non-ASCII envelope sender gets a report with UTF-8 header fields
(RFC 6532), which the upstream client then sends with SMTPUTF8.
"""

from __future__ import annotations

import secrets
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING

from relay.clock import to_datetime

if TYPE_CHECKING:
    from relay.delivery.upstream import SendResult


def _status_code(reply: str, *, permanent: bool) -> str:
    """The enhanced status code in an SMTP reply, or a generic one."""
    parts = reply.split()
    if len(parts) > 1 and parts[1].count(".") == 2 and parts[1][0] in "245":  # noqa: PLR2004
        return parts[1]
    return "5.0.0" if permanent else "4.0.0"


# RFC 6533 section 3: QCHAR is printable ASCII except "+", "=" and "\\".
_QCHAR = frozenset(chr(c) for c in range(0x21, 0x7F)) - {"+", "=", "\\"}


def address_field(address: str) -> str:
    """A recipient as a DSN's Final-Recipient value (RFC 3464; RFC 6533 for non-ASCII)."""
    if address.isascii():
        return f"rfc822; {address}"
    return "utf-8; " + "".join(c if c in _QCHAR else f"\\x{{{ord(c):X}}}" for c in address)


def build_dsn(
    *,
    reporting_host: str,
    original: bytes,
    message_id: str,
    mail_from: str,
    recipient: str,
    result: SendResult,
    arrival: float,
    now: float,
    expired: bool,
) -> bytes:
    """A multipart/report DSN telling `mail_from` that `recipient` could not be reached."""
    reason = (
        "The message could not be delivered within the time allowed."
        if expired
        else "The receiving server refused the message permanently."
    )
    return _report(
        reporting_host=reporting_host,
        original=original,
        message_id=message_id,
        mail_from=mail_from,
        failures=[(recipient, result.reply if result.code is not None else None)],
        fallback=result.reply,
        text=(
            f"Your message (queue id {message_id}) could not be delivered to <{recipient}>.\n"
            f"{reason}\n\nThe server said: {result.reply}\n"
        ),
        arrival=arrival,
        now=now,
    )


def build_refusal_dsn(
    *,
    reporting_host: str,
    original: bytes,
    message_id: str,
    mail_from: str,
    refused: list[tuple[str, str]],
    arrival: float,
    now: float,
) -> bytes:
    """A DSN telling `mail_from` that the relay itself refused these (recipient, reply) at DATA.

    SMTP has one reply for all of a message's recipients, so the 250 that took the others
    cannot carry these refusals: as every MTA does for a recipient it has accepted and cannot
    deliver, the relay reports each one with its own reply as `Diagnostic-Code`.
    """
    lines = "".join(f"<{recipient}>: {reply}\n" for recipient, reply in refused)
    return _report(
        reporting_host=reporting_host,
        original=original,
        message_id=message_id,
        mail_from=mail_from,
        failures=[(recipient, reply) for recipient, reply in refused],
        fallback="",
        text=(
            f"Your message (queue id {message_id}) was accepted for its other recipients, but"
            f" the relay's policy refused it for these:\n\n{lines}"
        ),
        arrival=arrival,
        now=now,
    )


def _report(
    *,
    reporting_host: str,
    original: bytes,
    message_id: str,
    mail_from: str,
    failures: list[tuple[str, str | None]],
    fallback: str,
    text: str,
    arrival: float,
    now: float,
) -> bytes:
    """The multipart/report: `text`, one status block per (recipient, reply), the headers.

    A recipient without a reply (no SMTP answer came) gets no `Diagnostic-Code`; its status
    is taken from `fallback`.
    """
    headers = message_from_bytes(original.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    report = EmailMessage(policy=policy.SMTP)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_host}>"
    report["To"] = mail_from
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = format_datetime(to_datetime(now))
    report["Message-ID"] = make_msgid(idstring=secrets.token_hex(4), domain=reporting_host)
    report["Auto-Submitted"] = "auto-replied"
    report.set_content(f"This is the mail system at {reporting_host}.\n\n{text}")
    report.make_mixed()
    report.replace_header("Content-Type", "multipart/report; report-type=delivery-status")

    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_host}"
    per_message["X-Optin-Relay-Queue-ID"] = message_id
    per_message["Arrival-Date"] = format_datetime(to_datetime(arrival))
    blocks: list[Message | str] = [per_message]
    for recipient, reply in failures:
        per_recipient = Message()
        per_recipient["Final-Recipient"] = address_field(recipient)
        per_recipient["Action"] = "failed"
        per_recipient["Status"] = _status_code(reply or fallback, permanent=True)
        if reply is not None:
            per_recipient["Diagnostic-Code"] = f"smtp; {reply}"
        per_recipient["Last-Attempt-Date"] = format_datetime(to_datetime(now))
        blocks.append(per_recipient)
    status = EmailMessage()
    status["Content-Type"] = "message/delivery-status"
    status.set_payload(blocks)
    report.attach(status)

    returned = EmailMessage()
    returned["Content-Type"] = "text/rfc822-headers"
    # Never folded here: the email package would fold a long address into encoded words, which
    # no DSN reader decodes (the wire form folds what is over 998 octets before sending).
    wire = (policy.SMTP if mail_from.isascii() else policy.SMTPUTF8).clone(max_line_length=0)
    returned.set_payload(headers.as_string(policy=wire).rstrip("\r\n") + "\r\n")
    report.attach(returned)
    return report.as_bytes(policy=wire)
