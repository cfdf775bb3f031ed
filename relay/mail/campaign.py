"""Campaign keys: which messages belong to one broadcast, despite per-recipient personalisation.

A `List-Id` or `X-Campaign-ID` header names the campaign. Without one, the key is a fingerprint of
the From address, the Subject and the body text with what personalisation changes taken out:
links (tracking), addresses, numbers, the recipient's names (from To and Cc), and short lines
(greetings, sign-offs).

`parse` reads a submission once at DATA; its result serves the policies (header fields) and the
fingerprint (body text) alike.
"""

from __future__ import annotations

import functools
import hashlib
import re
from email import message_from_bytes
from email import policy as email_policy
from email.errors import MessageError
from email.header import Header, decode_header
from email.utils import getaddresses
from typing import TYPE_CHECKING

from relay.mail.text import decode_text

if TYPE_CHECKING:
    from email.message import Message

_URL = re.compile(r"(?:https?://|www\.)\S+")  # on lowercased text: IGNORECASE costs 4x
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_TAG = re.compile(r"<[^>]*>")
_ENTITY = re.compile(r"&[#\w]+;")
_DIGITS = re.compile(r"\d+")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_SPACES = re.compile(r"\s+")
_RUNS = re.compile(r" {2,}")
# ASCII text: digits deleted, every other byte that is not a letter or a line break (as
# str.splitlines knows them) made a space; then str.split finds exactly the words _WORD finds.
# bytes.translate is a table lookup in C (str.translate with a dict is a lookup per character).
_ASCII_DIGITS = bytes(c for c in range(128) if chr(c).isdigit())
_ASCII_WORDS = bytes(range(256)).translate(
    bytes(
        c if chr(c).isalpha() or chr(c) in "\n\r\x0b\x0c\x1c\x1d\x1e" else 0x20 for c in range(128)
    )
    + bytes(range(128, 256))
)
_MIN_LINE = 30  # shorter lines are greetings, names, sign-offs
_MAX_BODY = 256 * 1024  # enough text to tell campaigns apart
_MAX_CACHED_FROM = 998  # characters of From fields whose addresses are kept in the cache


def _header_text(value: object) -> str:
    """A header's text: encoded words decoded, raw 8-bit (SMTPUTF8) read as UTF-8."""
    if value is None:
        return ""
    chunks: list[str] = []
    try:
        decoded = decode_header(value if isinstance(value, Header) else str(value))
    except (MessageError, ValueError, LookupError, UnicodeError):  # a broken encoded word
        return str(value)
    for chunk, charset in decoded:
        if isinstance(chunk, str):
            chunks.append(chunk)
            continue
        chunks.append(decode_text(chunk, charset if charset != "unknown-8bit" else None))
    return "".join(chunks)


def _names(headers: Message) -> set[str]:
    """Words that name the recipients: display names and local-part pieces."""
    words: set[str] = set()
    fields = [
        _header_text(v) for v in (headers.get_all("To") or []) + (headers.get_all("Cc") or [])
    ]
    for name, address in getaddresses(fields):
        words.update(w.lower() for w in _WORD.findall(name) if len(w) > 1)
        local = address.partition("@")[0]
        words.update(w.lower() for w in _WORD.findall(local) if len(w) > 1)
    return words


def parse(content: bytes) -> Message:
    """The submission parsed once: every header field, and the body up to what the key reads.

    compat32 keeps raw header strings (the default policy builds a class per header read).
    """
    ends = [i for i in (content.find(b"\r\n\r\n"), content.find(b"\n\n")) if i != -1]
    head = min(ends) + 4 if ends else len(content)
    return message_from_bytes(content[: max(head, _MAX_BODY * 2)], policy=email_policy.compat32)


def _body_text(message: Message) -> str:
    """The message's readable text: text/plain parts, else text/html without tags."""
    plain: list[str] = []
    html: list[str] = []
    for part in message.walk():
        if part.get_content_maintype() != "text" or part.get_content_disposition() == "attachment":
            continue
        raw = part.get_payload(decode=True)
        if not isinstance(raw, bytes):
            continue
        text = decode_text(raw, part.get_content_charset())
        (plain if part.get_content_subtype() == "plain" else html).append(text)
    if plain:
        return "\n".join(plain)
    return _ENTITY.sub(" ", _TAG.sub("\n", "\n".join(html)))


def _normalise(text: str, names: set[str]) -> list[str]:
    """The lines of at least _MIN_LINE characters, as their words joined by single spaces."""
    # Whole-text substitutions: far cheaper than per line (the address pattern backtracks).
    text = text.lower()
    if "://" in text or "www." in text:  # str.find is far quicker than the pattern's scan
        text = _URL.sub("", text)
    if "@" in text:
        text = _EMAIL.sub("", text)
    if not text.isascii():
        lines = (_WORD.findall(line) for line in _DIGITS.sub("", text).splitlines())
        return _kept([" ".join(_without(words, names)) for words in lines])
    # The usual case, in C over the whole text: bytes.translate leaves letters, spaces and line
    # breaks; runs of spaces become one. A line is then its words joined by single spaces, and
    # only a line holding a name (as a substring) is split into words to take the name out.
    ascii_text = text.encode("ascii").translate(_ASCII_WORDS, _ASCII_DIGITS).decode("ascii")
    kept = []
    for line in _RUNS.sub(" ", ascii_text).splitlines():
        if len(line) < _MIN_LINE:  # taking names or edge spaces out only makes it shorter
            continue
        if names and any(name in line for name in names):
            kept.append(" ".join(_without(line.split(), names)))
        else:
            kept.append(line.strip(" "))
    return _kept(kept)


def _without(words: list[str], names: set[str]) -> list[str]:
    return [w for w in words if w not in names] if names else words


def _kept(lines: list[str]) -> list[str]:
    return [line for line in lines if len(line) >= _MIN_LINE]


def _from(fields: tuple[str, ...]) -> str:
    """The From addresses, lower-case."""
    return " ".join(addr.lower() for _, addr in getaddresses(list(fields)))


_senders = functools.lru_cache(maxsize=1024)(_from)  # one campaign's copies share their From


def campaign_key(headers: Message) -> str:
    """The campaign of a message read by `parse` (stable across personalised copies)."""
    for name in ("List-Id", "X-Campaign-ID"):
        value = _SPACES.sub(" ", _header_text(headers.get(name))).strip().lower()
        if value:
            return f"id:{value}"
    names = _names(headers)
    fields = tuple(_header_text(v) for v in headers.get_all("From") or [])
    # Only From fields of an ordinary size are cached: the cache stays small whatever comes in.
    sender = _senders(fields) if sum(map(len, fields)) <= _MAX_CACHED_FROM else _from(fields)
    subject = " ".join(
        w
        for w in _WORD.findall(_DIGITS.sub("", _header_text(headers.get("Subject"))).lower())
        if w not in names
    )
    body = _normalise(_body_text(headers), names)
    digest = hashlib.sha256("\n".join([sender, subject, *body]).encode()).hexdigest()[:32]
    return f"fp:{digest}"
