r"""Delivery status notifications (RFC 3464): the report sent to the envelope sender on failure.

An internationalised recipient (SMTPUTF8, RFC 6531) is named with the `utf-8` address type of
RFC 6533 in its 7-bit form (`\x{HEX}` for each character outside printable ASCII), so the
status part stays 7-bit; a non-ASCII envelope sender gets a report with UTF-8 header fields
(RFC 6532), which the upstream client then sends with SMTPUTF8.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING

from relay.clock import to_datetime
from relay.mail.dsnrequest import NO_REQUEST, DsnRequest

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


RET_FULL_LIMIT = 50_000  # octets: a larger message is returned by its header (as Postfix does)


def _original_field(orcpt: str) -> str:
    """ORCPT (`type;address`, decoded) as Original-Recipient: 7-bit, RFC 6533 when it is not."""
    kind, _, address = orcpt.partition(";")
    return f"{kind};{address}" if address.isascii() else address_field(address)


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
    request: DsnRequest = NO_REQUEST,
) -> bytes:
    """A multipart/report DSN telling `mail_from` that `recipient` could not be reached.

    `request`: what the sender asked on MAIL and RCPT (ORCPT, RET, ENVID).
    """
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
        entries=[
            _Entry(
                recipient,
                result.reply if result.code is not None else None,
                request.orcpt,
                _status_code(result.reply, permanent=True),
            )
        ],
        request=request,
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
    refused: list[tuple[str, str, DsnRequest]],
    arrival: float,
    now: float,
) -> bytes:
    """A DSN telling `mail_from` that the relay itself refused these recipients at DATA.

    `refused`: (recipient, the relay's reply, what the sender asked for it). SMTP has one
    reply for all of a message's recipients, so the 250 that took the others cannot carry
    these refusals: as every MTA does for a recipient it has accepted and cannot deliver, the
    relay reports each one with its own reply as `Diagnostic-Code`.
    """
    lines = "".join(f"<{recipient}>: {reply}\n" for recipient, reply, _ in refused)
    return _report(
        reporting_host=reporting_host,
        original=original,
        message_id=message_id,
        mail_from=mail_from,
        entries=[
            _Entry(recipient, reply, request.orcpt, _status_code(reply, permanent=True))
            for recipient, reply, request in refused
        ],
        request=refused[0][2] if refused else NO_REQUEST,
        text=(
            f"Your message (queue id {message_id}) was accepted for its other recipients, but"
            f" the relay's policy refused it for these:\n\n{lines}"
        ),
        arrival=arrival,
        now=now,
    )


def build_relayed_dsn(
    *,
    reporting_host: str,
    original: bytes,
    message_id: str,
    mail_from: str,
    recipient: str,
    reply: str,
    request: DsnRequest,
    arrival: float,
    now: float,
) -> bytes:
    """The success report of NOTIFY=SUCCESS: the upstream took the copy for `recipient`.

    `Action: relayed` (RFC 3464 section 2.3.3): the copy went on with the relay's own envelope
    sender, so no later hop reports its delivery to `mail_from`.
    """
    return _report(
        reporting_host=reporting_host,
        original=original,
        message_id=message_id,
        mail_from=mail_from,
        entries=[_Entry(recipient, reply, request.orcpt, "2.0.0", action="relayed")],
        request=request,
        text=(
            f"Your message (queue id {message_id}) was relayed for <{recipient}>: the next"
            f" server accepted it.\nNo notice of its final delivery will follow.\n\n"
            f"The server said: {reply}\n"
        ),
        arrival=arrival,
        now=now,
        subject="Successful Mail Delivery Report",
    )


@dataclass(frozen=True)
class _Entry:
    """One recipient's block of a report."""

    recipient: str
    reply: str | None  # the SMTP answer (None: none came)
    original_recipient: str | None  # ORCPT, decoded
    status: str
    action: str = "failed"


def _report(
    *,
    reporting_host: str,
    original: bytes,
    message_id: str,
    mail_from: str,
    entries: list[_Entry],
    request: DsnRequest,
    text: str,
    arrival: float,
    now: float,
    subject: str = "Undelivered Mail Returned to Sender",
) -> bytes:
    """The multipart/report: `text`, one status block per entry, the message or its header.

    The whole message comes back only when the sender asked (RET=FULL) and it is 7-bit and at
    most RET_FULL_LIMIT octets; otherwise its header does. An entry without a reply gets no
    `Diagnostic-Code`.
    """
    report = EmailMessage(policy=policy.SMTP)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_host}>"
    report["To"] = mail_from
    report["Subject"] = subject
    report["Date"] = format_datetime(to_datetime(now))
    report["Message-ID"] = make_msgid(idstring=secrets.token_hex(4), domain=reporting_host)
    report["Auto-Submitted"] = "auto-replied"
    report.set_content(f"This is the mail system at {reporting_host}.\n\n{text}")
    report.make_mixed()
    report.replace_header("Content-Type", "multipart/report; report-type=delivery-status")

    per_message = Message()
    if request.envid is not None:
        per_message["Original-Envelope-Id"] = request.envid
    per_message["Reporting-MTA"] = f"dns; {reporting_host}"
    per_message["X-Optin-Relay-Queue-ID"] = message_id
    per_message["Arrival-Date"] = format_datetime(to_datetime(arrival))
    blocks: list[Message | str] = [per_message]
    for entry in entries:
        per_recipient = Message()
        if entry.original_recipient is not None:
            per_recipient["Original-Recipient"] = _original_field(entry.original_recipient)
        per_recipient["Final-Recipient"] = address_field(entry.recipient)
        per_recipient["Action"] = entry.action
        per_recipient["Status"] = entry.status
        if entry.reply is not None:
            per_recipient["Diagnostic-Code"] = f"smtp; {entry.reply}"
        per_recipient["Last-Attempt-Date"] = format_datetime(to_datetime(now))
        blocks.append(per_recipient)
    status = EmailMessage()
    status["Content-Type"] = "message/delivery-status"
    status.set_payload(blocks)
    report.attach(status)
    # Never folded here: the email package would fold a long address into encoded words, which
    # no DSN reader decodes (the wire form folds what is over 998 octets before sending).
    wire = (policy.SMTP if mail_from.isascii() else policy.SMTPUTF8).clone(max_line_length=0)
    report.attach(_returned(original, request, wire))
    return report.as_bytes(policy=wire)


def _returned(original: bytes, request: DsnRequest, wire: policy.Policy) -> EmailMessage:
    """The message (RET=FULL, small and 7-bit) or its header, as the report's last part."""
    returned = EmailMessage()
    if request.ret == "FULL" and len(original) <= RET_FULL_LIMIT and original.isascii():
        returned["Content-Type"] = "message/rfc822"
        returned.set_payload([message_from_bytes(original, policy=policy.SMTP)])
        return returned
    headers = message_from_bytes(original.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    returned["Content-Type"] = "text/rfc822-headers"
    returned.set_payload(headers.as_string(policy=wire).rstrip("\r\n") + "\r\n")
    return returned
