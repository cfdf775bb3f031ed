"""The unsubscribe render of one recipient's copy: List-Unsubscribe headers and a visible footer.

Headers: every `List-Unsubscribe` and `List-Unsubscribe-Post` the sender set is removed and
exactly one of each is added (RFC 2369, RFC 8058), folded only between items.

Body: the footer goes into every inline text/plain and text/html part (HTML before `</body>`,
else at the end), in any MIME structure. Attachments and attached messages are not touched. A
message that is signed or encrypted anywhere (multipart/signed, multipart/encrypted, S/MIME, PGP)
gets the headers only, so its bytes stay exactly as signed. Changed parts are re-encoded: base64
stays base64; otherwise quoted-printable when the text is not ASCII or has long lines, so no line
exceeds 998 characters. Malformed MIME gets the headers only; the caller logs why.

Parsing and generating use the standard library's email package (compat32, which keeps headers and
untouched bodies as they came).
"""

from __future__ import annotations

import base64
import codecs
import re
from dataclasses import dataclass
from email import errors, message_from_bytes
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import Message
from email.quoprimime import body_encode
from io import BytesIO

_REPLACED = {b"list-unsubscribe", b"list-unsubscribe-post"}
_SEALED = {
    "multipart/signed",
    "multipart/encrypted",
    "application/pkcs7-mime",
    "application/x-pkcs7-mime",
    "application/pkcs7-signature",
    "application/pgp-encrypted",
    "application/pgp-signature",
}
_MALFORMED = (
    errors.StartBoundaryNotFoundDefect,
    errors.CloseBoundaryNotFoundDefect,
    errors.MultipartInvariantViolationDefect,
    errors.NoBoundaryInMultipartDefect,
    errors.MultipartConversionError,
)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_POLICY = email_policy.compat32.clone(linesep="\r\n", max_line_length=0)
MAX_LINE = 998


@dataclass(frozen=True)
class Footer:
    """What to add to each text part, as plain text and as an HTML fragment."""

    text: str
    html: str


@dataclass(frozen=True)
class Rendered:
    """The rendered copy and what happened to its body."""

    content: bytes
    parts_changed: int
    body_skipped: str | None  # why the body was left alone: "sealed", "malformed", "no_text"


def list_unsubscribe_headers(https_url: str, mailto: str | None) -> list[bytes]:
    """The two header fields, CRLF-terminated, the first folded between its items."""
    items = [f"<{https_url}>"] + ([f"<mailto:{mailto}>"] if mailto else [])
    value = ",\r\n ".join(items)
    return [
        f"List-Unsubscribe: {value}\r\n".encode("ascii"),
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
    ]


def split_message(content: bytes) -> tuple[bytes, bytes]:
    """The header block (with its final line end) and the body (after the empty line)."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        index = content.find(separator)
        if index != -1:
            cut = index + len(separator)
            return content[: cut - len(separator) // 2], content[cut:]
    return content if content.endswith(b"\n") else content + b"\r\n", b""


def replace_headers(content: bytes, new_fields: list[bytes]) -> bytes:
    """Drop every List-Unsubscribe(-Post) field of the top-level header, append `new_fields`."""
    header, body = split_message(content)
    kept: list[bytes] = []
    dropping = False
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):  # continuation of the field before
            if not dropping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        dropping = name in _REPLACED
        if not dropping:
            kept.append(line)
    return b"".join(kept) + b"".join(new_fields) + b"\r\n" + body


def _sealed(message: Message) -> bool:
    return any(part.get_content_type() in _SEALED for part in message.walk())


def _malformed(message: Message) -> bool:
    return any(isinstance(defect, _MALFORMED) for part in message.walk() for defect in part.defects)


def _body_parts(part: Message) -> list[Message]:
    """Inline text/plain and text/html parts, not descending into attached messages."""
    if part.get_content_maintype() == "message":
        return []
    if part.is_multipart():
        found: list[Message] = []
        for sub in part.get_payload():
            if isinstance(sub, Message):
                found.extend(_body_parts(sub))
        return found
    if part.get_content_disposition() == "attachment":
        return []
    if part.get_content_type() in ("text/plain", "text/html"):
        return [part]
    return []


def _decode(part: Message) -> tuple[str, str]:
    """The part's text and the charset it was read with."""
    raw = part.get_payload(decode=True)
    data = raw if isinstance(raw, bytes) else b""
    charset = part.get_content_charset() or "us-ascii"
    for candidate in (charset, "utf-8", "latin-1"):
        try:
            return data.decode(candidate), candidate
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("latin-1"), "latin-1"  # pragma: no cover - latin-1 decodes anything


def _with_footer(text: str, footer: Footer, *, html: bool) -> str:
    newline = "\r\n" if "\r\n" in text else "\n"
    if html:
        match = None
        for match in _BODY_END.finditer(text):  # noqa: B007 - the last one is wanted
            pass
        fragment = footer.html.replace("\n", newline)
        if match is not None:
            return text[: match.start()] + fragment + newline + text[match.start() :]
        return text + newline + fragment + newline
    addition = footer.text.replace("\n", newline)
    separator = "" if not text or text.endswith(newline) else newline
    return text + separator + newline + addition + newline


def _encode(part: Message, text: str, charset: str) -> None:
    """Set `text` as the part's body, re-encoded so it is 7-bit clean with short lines."""
    try:
        codecs.lookup(charset)
        data = text.encode(charset)
    except (LookupError, UnicodeEncodeError):
        charset = "utf-8"
        data = text.encode(charset)
    original = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    lines = text.replace("\r\n", "\n").split("\n")
    if original == "base64":
        cte, payload = "base64", base64.encodebytes(data).decode("ascii")
    elif data.isascii() and max(map(len, lines), default=0) <= MAX_LINE:
        cte, payload = "7bit", "\n".join(lines)
    else:
        unified = data.replace(b"\r\n", b"\n").decode("latin-1")
        cte, payload = "quoted-printable", body_encode(unified, maxlinelen=76, eol="\n")
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = cte
    part.set_payload(payload)
    if charset.lower() != "us-ascii" or part.get_param("charset") is not None:
        part.set_param("charset", charset)


def render(content: bytes, headers: list[bytes], footer: Footer) -> Rendered:
    """The copy with the unsubscribe headers and, where the body allows, the footer."""
    message = message_from_bytes(content, policy=_POLICY)
    skipped: str | None = None
    changed = 0
    if _sealed(message):
        skipped = "sealed"
    elif _malformed(message):
        skipped = "malformed"
    else:
        parts = _body_parts(message)
        if not parts:
            skipped = "no_text"
        for part in parts:
            text, charset = _decode(part)
            html = part.get_content_subtype() == "html"
            _encode(part, _with_footer(text, footer, html=html), charset)
            changed += 1
    if changed:
        out = BytesIO()
        BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(message)
        content = out.getvalue()
    return Rendered(replace_headers(content, headers), changed, skipped)
