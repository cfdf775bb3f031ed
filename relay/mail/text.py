"""A MIME part's text, whatever charset it claims: never an exception for a name no codec knows.

Senders write charsets that do not exist (`iso-8882-1`), garbled names (a NUL, 300 characters)
and bytes that are not in the charset they name. Reading text for a fingerprint or a report must
not fail on any of them: an unknown or unusable charset is read as UTF-8, and undecodable bytes
become U+FFFD.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from email.message import Message


def decode_text(data: bytes, charset: str | None) -> str:
    """`data` decoded with `charset` if a codec knows it, else as UTF-8; bad bytes replaced."""
    if charset:
        try:
            return data.decode(charset, "replace")
        except (LookupError, ValueError):  # no such codec, or a name no codec can be looked up by
            pass
    return data.decode("utf-8", "replace")


def part_text(part: Message) -> str:
    """A leaf part's text: transfer encoding undone, then `decode_text` with its charset."""
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return decode_text(payload, part.get_content_charset())
    raw = part.get_payload()
    return raw if isinstance(raw, str) else ""
