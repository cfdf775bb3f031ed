"""Markers: what the relay writes into mail so that what comes back can be traced to a recipient.

Each marker is written and read here, nowhere else:

| marker | written into | names |
| --- | --- | --- |
| `X-Optin-Trace: TOKEN` | every relayed copy (the trace policy) | the spooled recipient |
| `bounce+TOKEN@INBOUND` | the copy's envelope sender (VERP) | the spooled recipient |
| `unsub+ID@INBOUND` | the copy's mailto List-Unsubscribe | the spooled recipient |
| `PUBLIC_URL/u/TOKEN` | the https List-Unsubscribe and the footer link | account and recipient |
| `unsub+TOKEN@INBOUND` | the mailto address of earlier versions | account and recipient |
| `... (optin-relay) with P id QUEUEID` | the relay's `Received` field | the spooled message |

The tokens themselves (their MACs and encodings) are `relay.tokens`; this module places them in
mail and finds them again in reports, DSNs and inbound addresses.
"""

from __future__ import annotations

import re
from email.utils import format_datetime

from relay.clock import to_datetime

TRACE_HEADER = "X-Optin-Trace"
BOUNCE_PREFIX = "bounce+"
UNSUBSCRIBE_PREFIX = "unsub+"
# The relay's own complaint mailboxes at the inbound domain (postmaster: RFC 5321 section 4.5.1).
COMPLAINT_BOXES = frozenset({"fbl", "abuse", "postmaster"})

_UNSAFE = re.compile(r"[^\x21-\x7e]")
_TRACE = re.compile(rf"{TRACE_HEADER}:\s*([a-z2-7]{{29}})\b", re.IGNORECASE)
_BOUNCE = re.compile(r"\bbounce\+([a-z2-7]{29})@", re.IGNORECASE)
_UNSUB = re.compile(r"(?:/u/|\bunsub\+)([A-Za-z0-9_-]{24,})")
_QUEUE_ID = re.compile(r"\(optin-relay\)\s+with\s+\S+\s+id\s+([0-9A-F]{21})\b")


# --- writing ---


def trace_field(token: str) -> bytes:
    """The trace header field, ready to prepend to a copy."""
    return f"{TRACE_HEADER}: {token}\r\n".encode()


def bounce_address(token: str, domain: str) -> str:
    """The VERP envelope sender of one copy."""
    return f"{BOUNCE_PREFIX}{token}@{domain}"


def unsubscribe_link(public_url: str, token: str) -> str:
    """The https unsubscribe link of one copy (the web serves `/u/{token}`)."""
    return f"{public_url}/u/{token}"


def unsubscribe_mailto(token: str, domain: str) -> str:
    """The mailto unsubscribe address of one copy."""
    return f"{UNSUBSCRIBE_PREFIX}{token}@{domain}"


def received_header(
    *,
    helo: str | None,
    client_ip: str,
    hostname: str,
    protocol: str,
    message_id: str,
    now: float,
) -> bytes:
    """The trace header this relay prepends (RFC 5321 section 4.4), naming the queue id."""
    helo_text = _UNSAFE.sub("", helo or "unknown")[:255] or "unknown"
    address = f"IPv6:{client_ip}" if ":" in client_ip else client_ip
    return (
        f"Received: from {helo_text} ([{address}])\r\n"
        f"\tby {hostname} (optin-relay) with {protocol} id {message_id};\r\n"
        f"\t{format_datetime(to_datetime(now))}\r\n"
    ).encode("ascii")


# --- reading ---


def bounce_token(local: str) -> str | None:
    """The token of a `bounce+TOKEN` local part (any case), else None."""
    prefix, _, token = local.partition("+")
    return token if prefix.lower() == BOUNCE_PREFIX[:-1] and token else None


def unsubscribe_token(local: str) -> str | None:
    """The token of an `unsub+TOKEN` local part (any case), else None."""
    prefix, _, token = local.partition("+")
    return token if prefix.lower() == UNSUBSCRIBE_PREFIX[:-1] and token else None


def trace_tokens(text: str) -> list[str]:
    """Trace tokens in the text of a returned message."""
    return _TRACE.findall(text)


def bounce_tokens(text: str) -> list[str]:
    """Tokens of bounce addresses in the text of a returned message."""
    return _BOUNCE.findall(text)


def unsubscribe_tokens(text: str) -> list[str]:
    """Unsubscribe tokens (links and mailto addresses, short and long) in a returned message."""
    return _UNSUB.findall(text)


def queue_ids(text: str) -> list[str]:
    """Queue ids in the relay's own `Received` fields of a returned message."""
    return _QUEUE_ID.findall(text)
