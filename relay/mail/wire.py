"""The wire form of a copy: what the upstream may be sent, made just before it is signed.

RFC 5321 (4.5.3.1.6) and RFC 5322 (2.1.1) cap a line at 998 octets without its CRLF, and an
upstream without 8BITMIME takes 7-bit content only. Real submissions break the first rule
(Outlook and HTML generators write long lines, and the relay accepts up to
`smtp.max_line_length`, as Postfix does), so `wire_form` re-encodes what does not fit:

- **Line ends** are CRLF (a bare LF becomes CRLF): the signature covers exactly what is sent.
- **8-bit body parts**, for an upstream without 8BITMIME: text becomes quoted-printable, anything
  else base64.
- **Body parts with lines over 998 octets**: text in 7bit or 8bit becomes quoted-printable,
  anything else base64; a base64 or quoted-printable part written with overlong lines is
  decoded and encoded again the same way. The decoded content stays exactly the same.
- **Header fields with lines over 998 octets** are folded at whitespace (RFC 5322 2.2.3: the
  unfolded value is unchanged).
- **Whatever is still too long** (a header run of 998 octets without whitespace, a multipart
  preamble, a part the email package cannot parse) is broken by inserting CRLF and a space, as
  Postfix does (`smtp_line_length_limit`): the one change that alters content, for input no
  RFC allows.

Parts are read and written with the standard library's email package (compat32, which keeps
headers and untouched bodies as they came). A message that needs none of this is returned as it
is, after one scan of its bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
from email import message_from_bytes
from email import policy as email_policy
from email.generator import BytesGenerator
from io import BytesIO
from typing import TYPE_CHECKING

from relay.mail.headers import split_message

if TYPE_CHECKING:
    from email.message import Message

MAX_LINE = 998
_POLICY = email_policy.compat32.clone(linesep="\r\n", max_line_length=0)
_BARE_LF = re.compile(rb"(?<!\r)\n")
_WHITESPACE = re.compile(rb"[ \t]")


def has_long_lines(content: bytes) -> bool:
    """Whether any line of `content` is longer than 998 octets (its CRLF not counted)."""
    lines = content.split(b"\n")
    # A split is a few microseconds for a newsletter; a regular expression was a hundred times more.
    if max(map(len, lines)) <= MAX_LINE:
        return False
    return any(len(line) > MAX_LINE and len(line.rstrip(b"\r")) > MAX_LINE for line in lines)


def _has_long_text_lines(text: str) -> bool:
    return any(len(line.rstrip("\r")) > MAX_LINE for line in text.split("\n"))


def wire_form(content: bytes, *, seven_bit: bool = False) -> bytes:
    """`content` as it may go to the upstream: CRLF, lines of at most 998 octets, 7-bit if asked.

    Never raises: a message the email package cannot handle keeps its parts as they are, and
    only the last resort (breaking long lines) applies to it.
    """
    long_lines = has_long_lines(content)
    reencode = (seven_bit and not content.isascii()) or long_lines
    if reencode:
        content = _reencode_parts(content, seven_bit=seven_bit, long_lines=long_lines)
    if content.count(b"\n") != content.count(b"\r\n"):
        content = _BARE_LF.sub(b"\r\n", content)  # a CR before LF makes no line longer
    if reencode and has_long_lines(content):
        header, body = split_message(content)
        content = _fold_header(header) + b"\r\n" + _break_lines(body)
    return content


def _reencode_parts(content: bytes, *, seven_bit: bool, long_lines: bool) -> bytes:
    """Body parts that are 8-bit (when `seven_bit`) or have long lines, encoded again."""
    try:
        message = message_from_bytes(content, policy=_POLICY)
        changed = False
        for part in message.walk():
            # A multipart the parser could not split (no boundary) is a leaf to it, but its
            # encoding must stay 7bit or 8bit (RFC 2045 6.4): the last resort handles it.
            if part.is_multipart() or part.get_content_maintype() in ("multipart", "message"):
                continue
            changed |= _reencode_part(part, seven_bit=seven_bit, long_lines=long_lines)
        if not changed:
            return content
        if message.get("MIME-Version") is None:
            message["MIME-Version"] = "1.0"  # RFC 2045: without it, the encoding is ignored
        out = BytesIO()
        BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(message)
        return out.getvalue()
    except Exception:  # noqa: BLE001 - leave what cannot be parsed as it is
        return content


def _reencode_part(part: Message, *, seven_bit: bool, long_lines: bool) -> bool:
    """Encode one leaf part again if it must be; whether it was."""
    cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    payload = part.get_payload()
    if not isinstance(payload, str):
        return False
    too_long = long_lines and _has_long_text_lines(payload)
    encoded_already = cte in ("base64", "quoted-printable")
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return False
    eight_bit = seven_bit and not encoded_already and not raw.isascii()
    if not (too_long or eight_bit):
        return False
    text = part.get_content_maintype() == "text"
    if cte == "base64" or not text:
        encoded, cte = base64.encodebytes(raw), "base64"
    else:
        encoded = binascii.b2a_qp(raw.replace(b"\r\n", b"\n"), istext=True)
        cte = "quoted-printable"
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = cte
    part.set_payload(encoded.decode("ascii"))
    return True


def _fold_header(header: bytes) -> bytes:
    """The header block with every line over 998 octets folded (at whitespace where it can be)."""
    lines = []
    for field_line in header.split(b"\r\n")[:-1]:
        rest = field_line
        while len(rest) > MAX_LINE:
            cut = _fold_point(rest)
            if cut:
                lines.append(rest[:cut])
                rest = rest[cut:]
            else:  # no whitespace to fold at: break as Postfix does
                lines.append(rest[:MAX_LINE])
                rest = b" " + rest[MAX_LINE:]
        lines.append(rest)
    return b"".join(line + b"\r\n" for line in lines)


def _fold_point(line: bytes) -> int:
    """Where to fold `line`: its last whitespace leaving a short first piece; 0 for nowhere.

    The first piece has at most 998 octets, and neither piece is whitespace only (RFC 5322
    forbids such lines).
    """
    for match in reversed(list(_WHITESPACE.finditer(line, 1, MAX_LINE + 1))):
        cut = match.start()
        if line[:cut].strip(b" \t") and line[cut:].strip(b" \t"):
            return cut
    return 0


def _break_lines(body: bytes) -> bytes:
    """The body with every line over 998 octets broken by CRLF and a space (last resort)."""
    if not has_long_lines(body):
        return body
    lines = []
    for body_line in body.split(b"\r\n"):
        rest = body_line
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = b" " + rest[MAX_LINE:]
        lines.append(rest)
    return b"\r\n".join(lines)
