"""What a MAIL FROM or RCPT TO path may be: checked at the door (RFC 5321, RFC 6531).

The relay accepts only what it can deliver, or at least bounce: a path with a control character,
the null path as a recipient, a non-ASCII path in a transaction without SMTPUTF8, or a path
longer than RFC 5321 allows is refused at once, so it never reaches the spool, the upstream
connection or another account's mail.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PATH = 254  # octets between < and > (RFC 5321 section 4.5.3.1.3: a path of 256 with them)
MAX_DOMAIN = 255  # octets (RFC 5321 section 4.5.3.1.2)


def refusal(address: str, *, smtputf8: bool, recipient: bool) -> tuple[str, str] | None:
    """The reply refusing `address` and its rule, or None when the relay can handle it."""
    if recipient and address in ("", "<>"):  # aiosmtpd hands the null path on as "<>"
        return "553 5.1.3 The null path <> cannot be a recipient", "address_null_recipient"
    if _CONTROL.search(address):
        return "553 5.1.3 Control characters are not allowed in an address", "address_control"
    if not _is_utf8(address):  # aiosmtpd keeps undecodable octets as lone surrogates
        return "553 5.6.7 An address must be valid UTF-8 (RFC 6531)", "address_not_utf8"
    if not address.isascii() and not smtputf8:
        return (
            "553 5.6.7 A non-ASCII address needs SMTPUTF8 on MAIL FROM (RFC 6531)",
            "address_needs_smtputf8",
        )
    encoded = address.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH or len(encoded.rpartition(b"@")[2]) > MAX_DOMAIN:
        return "553 5.1.3 The address is longer than RFC 5321 allows", "address_too_long"
    return None


def _is_utf8(text: str) -> bool:
    """Whether `text` came from valid UTF-8 (no octet kept as a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
