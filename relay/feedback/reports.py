"""Reading feedback mail: complaint reports (ARF, RFC 5965), forwarded spam and DSNs (RFC 3464).

Pure parsing, no effects: `read_complaint` says what a message sent to fbl@/abuse@ is, and
`read_dsn` what a message sent to a bounce address says about each recipient. Real-world reports
differ from the RFCs (`fixtures/arf/`): multipart/mixed forwards, reports without the enclosed
message, `text/rfc822-header(s)` instead of `message/rfc822`, auto-replies that are no complaint.
Parsing uses the standard library's email package (compat32 keeps malformed input readable).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import message_from_bytes
from email import policy as email_policy
from email.errors import MessageError
from email.header import decode_header, make_header
from email.message import Message
from email.parser import HeaderParser
from typing import Literal

from relay.mail.text import part_text

ComplaintKind = Literal[
    "complaint",  # abuse/fraud report, or a forwarded message: opens a case
    "unsubscribe",  # opt-out report: suppresses, no case
    "not_complaint",  # auth-failure, not-spam and unknown types; delivery reports
    "auto_reply",  # out-of-office and other automatic answers
    "no_report",  # nothing enclosed to act on
    "malformed",  # a feedback report that breaks RFC 5965
]
# Reports that are complaints about the mail (RFC 5965 section 7.3): each opens a case, its
# fine by type (feedback.fines). auth-failure and not-spam are not complaints.
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})
UNSUBSCRIBE_TYPES = frozenset({"opt-out", "unsubscribe"})
REQUIRED_FIELDS = ("Feedback-Type", "User-Agent", "Version")
_HEADERS_TYPES = frozenset({"text/rfc822-headers", "text/rfc822-header"})
_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|abwesenheit|vacation)",
    re.IGNORECASE,
)
_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")  # RFC 6533 EmbeddedUnicodeChar
_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class ComplaintReport:
    """What a message to the complaint addresses is, and what it encloses."""

    kind: ComplaintKind
    cause: str  # why it is this kind, for the log
    feedback_type: str = ""
    fields: dict[str, str] = field(default_factory=dict)  # the feedback-report fields
    original_rcpt_to: tuple[str, ...] = ()
    enclosed: Message | None = None  # the reported message's header fields
    enclosed_text: str = ""  # the reported message (or headers) as text, for token search
    report_id: str = ""  # the report's own Message-ID


def _nested(part: Message) -> Message | None:
    """The message inside a message/* part."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    if isinstance(payload, str) and payload.strip():
        return HeaderParser(policy=email_policy.compat32).parsestr(payload.lstrip())
    return None


def _field(message: Message, name: str) -> str:
    """A header field as one plain string ('' when absent; non-ASCII fields come as Header)."""
    value = message.get(name)
    return "" if value is None else " ".join(str(value).split())


def _as_text(message: Message) -> str:
    """The message as text; broken input that the generator refuses gives its fields alone."""
    try:
        return message.as_string(policy=email_policy.compat32)
    except (MessageError, LookupError, UnicodeError, ValueError, TypeError):
        return "\n".join(f"{name}: {value}" for name, value in message.items())


def _decoded_fields(message: Message) -> str:
    """The header fields with RFC 2047 encoded words decoded (reporters often re-encode them)."""
    lines = []
    for name, value in message.items():
        try:
            lines.append(f"{name}: {make_header(decode_header(str(value)))}")
        except (MessageError, LookupError, UnicodeError, ValueError):
            continue
    return "\n".join(lines)


def _enclosed(message: Message) -> tuple[Message | None, str]:
    """The reported message (message/rfc822) or its header fields (text/rfc822-headers).

    The text is the enclosure as it came, then its header fields decoded: attribution searches
    both for the relay's markers.
    """
    for part in message.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = _nested(part)
            if inner is not None:
                return inner, f"{_as_text(inner)}\n{_decoded_fields(inner)}"
        if ctype in _HEADERS_TYPES:
            text = part_text(part).lstrip()
            inner = HeaderParser(policy=email_policy.compat32).parsestr(text)
            return inner, f"{text}\n{_decoded_fields(inner)}"
    return None, ""


def _auto_reply(message: Message) -> str | None:
    """Why `message` is an automatic answer (RFC 3834 and common markers), else None."""
    auto = _field(message, "Auto-Submitted").lower()
    if auto and not auto.startswith("no"):
        return f"Auto-Submitted: {auto}"
    for name in ("X-Autoreply", "X-Autorespond"):
        if message.get(name) is not None:
            return name
    if _field(message, "Precedence").lower() == "auto_reply":
        return "Precedence: auto_reply"
    if _AUTO_SUBJECT.match(_field(message, "Subject")):
        return "automatic reply subject"
    return None


def _first_values(block: Message) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in block.items():
        values.setdefault(name.title(), " ".join(str(value).split()))
    return values


def read_complaint(content: bytes) -> ComplaintReport:  # noqa: PLR0911 - one return per kind
    """Classify a message sent to fbl@/abuse@ and extract what attribution needs."""
    message = message_from_bytes(content, policy=email_policy.compat32)
    report_id = _field(message, "Message-ID")
    ctype = message.get_content_type()
    report_type = str(message.get_param("report-type", "") or "").lower()
    feedback = next(
        (p for p in message.walk() if p.get_content_type() == "message/feedback-report"), None
    )
    if feedback is not None:
        block = _nested(feedback)
        fields = _first_values(block) if block is not None else {}
        missing = [name for name in REQUIRED_FIELDS if not fields.get(name)]
        if missing:
            return ComplaintReport(
                "malformed", f"feedback report without {', '.join(missing)}", report_id=report_id
            )
        feedback_type = fields["Feedback-Type"].lower()
        rcpts = tuple(
            " ".join(str(v).split()).strip("<>")
            for v in (block.get_all("Original-Rcpt-To") or [] if block is not None else [])
        )
        enclosed, text = _enclosed(message)
        if feedback_type in COMPLAINT_TYPES:
            kind: ComplaintKind = "complaint"
        elif feedback_type in UNSUBSCRIBE_TYPES:
            kind = "unsubscribe"
        else:
            kind = "not_complaint"
        return ComplaintReport(
            kind,
            f"feedback type {feedback_type}",
            feedback_type,
            fields,
            tuple(r for r in rcpts if r),
            enclosed,
            text,
            report_id,
        )
    if ctype == "multipart/report" and report_type == "feedback-report":
        return ComplaintReport(
            "malformed",
            "feedback report without a message/feedback-report part",
            report_id=report_id,
        )
    if ctype == "multipart/report" and report_type == "delivery-status":
        return ComplaintReport("not_complaint", "a delivery status report", report_id=report_id)
    auto = _auto_reply(message)
    if auto is not None:
        return ComplaintReport("auto_reply", auto, report_id=report_id)
    enclosed, text = _enclosed(message)
    if enclosed is not None:
        return ComplaintReport(
            "complaint", "forwarded message", "abuse", {}, (), enclosed, text, report_id
        )
    # Forwarded inline: the reported message's text is in the body.
    body = "\n".join(
        part_text(part) for part in message.walk() if part.get_content_maintype() == "text"
    )
    return ComplaintReport(
        "no_report", "no enclosed message", "abuse", {}, (), None, body, report_id
    )


@dataclass(frozen=True)
class DsnRecipient:
    """One per-recipient block of a delivery status notification."""

    final_recipient: str
    original_recipient: str
    action: str
    status: str
    diagnostic: str


BounceClass = Literal["hard", "soft", "none"]


def _address(value: str) -> str:
    """`rfc822; user@example.org` -> `user@example.org`; RFC 6533's `utf-8` type decoded."""
    kind, _, address = value.partition(";")
    address = (address or value).strip().strip("<>")
    if kind.strip().lower() == "utf-8":
        address = _EMBEDDED.sub(_unembed, address)
    return address.lower()


def _unembed(match: re.Match[str]) -> str:
    code = int(match.group(1), 16)
    return chr(code) if code <= 0x10FFFF else match.group(0)  # noqa: PLR2004 - Unicode's end


def read_dsn(content: bytes) -> list[DsnRecipient] | None:
    """The per-recipient blocks of a DSN; None when `content` is no DSN (e.g. an auto-reply)."""
    message = message_from_bytes(content, policy=email_policy.compat32)
    part = next((p for p in message.walk() if p.get_content_type() in _STATUS_TYPES), None)
    if part is None:
        return None
    payload = part.get_payload()
    blocks: list[Message] = []
    if isinstance(payload, list):
        blocks = [b for b in payload if isinstance(b, Message)]
    elif isinstance(payload, str):  # an encoded or oddly formed status part
        text = part_text(part)
        blocks = [HeaderParser().parsestr(chunk) for chunk in re.split(r"\r?\n\s*\r?\n", text)]
    recipients: list[DsnRecipient] = []
    for block in blocks:
        values = _first_values(block)
        if "Final-Recipient" not in values and "Original-Recipient" not in values:
            continue
        recipients.append(
            DsnRecipient(
                _address(values.get("Final-Recipient", "")),
                _address(values.get("Original-Recipient", "")),
                values.get("Action", "").strip().lower(),
                values.get("Status", "").strip(),
                values.get("Diagnostic-Code", ""),
            )
        )
    return recipients


def bounce_class(entry: DsnRecipient) -> BounceClass:
    """Hard only on `Action: failed` with a 5.x.x status; failed 4.x.x, unknown or delayed: soft."""
    status = _STATUS.match(entry.status)
    if entry.action == "failed":
        return "hard" if status is not None and status.group(1) == "5" else "soft"
    if entry.action == "delayed":
        return "soft"
    return "none"
