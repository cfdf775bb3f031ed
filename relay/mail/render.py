"""The unsubscribe render of one recipient's copy: List-Unsubscribe headers and a visible footer.

Headers: every `List-Unsubscribe` and `List-Unsubscribe-Post` the sender set is removed and
exactly one of each is added (RFC 2369, RFC 8058), folded only between items.

Body: the footer goes into every inline text/plain and text/html part (HTML before `</body>`,
else at the end), in any MIME structure. Attachments and attached messages are not touched.
Changed parts are re-encoded: base64 stays base64; otherwise quoted-printable when the text is
not ASCII or has long lines, so no line exceeds 998 characters. Malformed MIME (a boundary
reused or missing) is changed in place only when the result parses into the same parts, each
text part with its footer.

Where no part can safely take the footer, a text/plain part with it is added: the message
becomes a multipart/mixed of the original body, byte for byte with its own Content-* fields,
and the footer part (as Mailman does). That is mail signed or encrypted anywhere (the signed
bytes stay exactly as signed, now one level down), malformed MIME whose parts would not come
back the same, and mail without a text part to take it (only attachments, an empty
multipart/related). `Rendered.footer_part` says which.

Parsing and generating use the standard library's email package (compat32, which keeps headers and
untouched bodies as they came).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import secrets
from dataclasses import dataclass
from email import errors, message_from_bytes
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesHeaderParser
from io import BytesIO

from relay.mail.headers import drop_fields, split_message
from relay.mail.wire import MAX_LINE

_REPLACED = frozenset({b"list-unsubscribe", b"list-unsubscribe-post"})
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
    # Why the footer went into a text/plain part of its own ("sealed", "malformed", "no_text"),
    # or None: it is in each of the `parts_changed` text parts.
    footer_part: str | None


def list_unsubscribe_headers(https_url: str, mailto: str | None) -> list[bytes]:
    """The two header fields, CRLF-terminated, the first folded between its items."""
    items = [f"<{https_url}>"] + ([f"<mailto:{mailto}>"] if mailto else [])
    value = ",\r\n ".join(items)
    return [
        f"List-Unsubscribe: {value}\r\n".encode("ascii"),
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
    ]


def replace_headers(content: bytes, new_fields: list[bytes]) -> bytes:
    """Drop every List-Unsubscribe(-Post) field of the top-level header, append `new_fields`."""
    return drop_fields(content, _REPLACED, add=tuple(new_fields))[0]


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
        except (LookupError, ValueError):  # no such codec, a garbled name, undecodable bytes
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


@dataclass(frozen=True)
class _Slot:
    """A changed part's body, kept as text until the recipient's URL is known."""

    marker: bytes
    text: str
    charset: str
    cte: str


@dataclass(frozen=True)
class Template:
    """A message prepared once for all its recipients: a skeleton with slots for changed parts."""

    skeleton: bytes
    slots: tuple[_Slot, ...]
    footer_part: str | None


_LONGEST_BOUNDARY = 70  # RFC 2046 section 5.1.1

# Room for the longest URL a placeholder may stand for, when deciding whether lines stay short.
_URL_ROOM = 600


def _plan(part: Message, text: str, charset: str, *, placeholder: str | None, marker: str) -> _Slot:
    """Choose the part's charset and encoding, and put a marker where its body goes."""
    try:
        codecs.lookup(charset)
        text.encode(charset)
    except (LookupError, UnicodeEncodeError):
        charset = "utf-8"
    had_cte = part.get("Content-Transfer-Encoding") is not None
    original = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    longest = 0
    for line in text.replace("\r\n", "\n").split("\n"):
        room = _URL_ROOM if placeholder and placeholder in line else 0
        longest = max(longest, len(line) + room)
    if original == "base64":
        cte = "base64"
    elif text.encode(charset).isascii() and longest <= MAX_LINE:
        cte = "7bit"
    else:
        cte = "quoted-printable"
    del part["Content-Transfer-Encoding"]
    if had_cte or cte != "7bit":
        part["Content-Transfer-Encoding"] = cte
    part.set_payload(marker)
    if charset.lower() != "us-ascii" or part.get_param("charset") is not None:
        part.set_param("charset", charset)
    return _Slot(marker.encode("ascii"), text, charset, cte)


def _encode(slot: _Slot, text: str) -> bytes:
    """The part's body in its transfer encoding, CRLF line ends, as the generator would write it."""
    data = text.encode(slot.charset)
    if slot.cte == "base64":
        payload = base64.encodebytes(data)
    elif slot.cte == "7bit":
        payload = data.replace(b"\r\n", b"\n")
    else:
        payload = binascii.b2a_qp(data.replace(b"\r\n", b"\n"), istext=True)
    return payload.replace(b"\n", b"\r\n")


def prepare(content: bytes, footer: Footer, *, placeholder: str | None = None) -> Template:
    """Parse once, pick the parts that get the footer, and keep a skeleton to fill per recipient.

    `placeholder` marks where each recipient's URL goes in the footer. Whatever the input, this
    never raises: MIME the email package cannot handle gets the headers only.
    """
    try:
        return _prepare_simple(content, footer, placeholder) or _prepare(
            content, footer, placeholder
        )
    except Exception:  # noqa: BLE001 - a parser failure: the footer in a part of its own
        return _wrapped(content, footer, placeholder, "malformed")


_IDENTITY = frozenset({"7bit", "8bit"})


def _simple_text(content: bytes) -> tuple[bytes, str, bool] | None:
    """A CRLF single-part inline text/plain or text/html message in 7bit or 8bit, ASCII only.

    Its header block (with the final CRLF), its body text, and whether it is HTML; else None.
    """
    end = content.find(b"\r\n\r\n")
    header, body = content[: end + 2], content[end + 4 :]
    if end == -1 or header.count(b"\n") != header.count(b"\r\n") or not body.isascii():
        return None
    fields = BytesHeaderParser(policy=_POLICY).parsebytes(header)
    ctype = fields.get_content_type()
    cte = str(fields.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    mime = fields.get("Content-Type") or fields.get("Content-Transfer-Encoding")
    simple = (
        not fields.defects
        and fields.get_content_disposition() != "attachment"
        and ctype in ("text/plain", "text/html")
        and fields.get_content_charset() in (None, "us-ascii", "utf-8")
        and cte in _IDENTITY
        # The full path adds MIME-Version to a message with MIME fields and without it.
        and (mime is None or fields.get("MIME-Version") is not None)
    )
    return (header, body.decode("ascii"), ctype == "text/html") if simple else None


def _prepare_simple(content: bytes, footer: Footer, placeholder: str | None) -> Template | None:
    """The common single-part text message, without parsing and regenerating all of it.

    Only the header block is parsed (`_simple_text`). Where the body stays ASCII with lines short
    enough for 7bit once the footer is in, the full path would only append the footer and keep
    every header as it is; so does this. Anything else returns None (the full path decides).
    """
    simple = _simple_text(content)
    if simple is None:
        return None
    header, body, html = simple
    text = _with_footer(body, footer, html=html)
    if not text.isascii():
        return None  # a charset or an encoding may have to change
    for line in text.replace("\r\n", "\n").split("\n"):  # as the full path measures
        room = _URL_ROOM if placeholder and placeholder in line else 0
        if len(line) + room > MAX_LINE:
            return None
    marker = f"optin-relay-slot-{secrets.token_hex(8)}-0".encode("ascii")
    slot = _Slot(marker, text, "us-ascii", "7bit")
    return Template(header + b"\r\n" + marker, (slot,), None)


def _prepare(content: bytes, footer: Footer, placeholder: str | None) -> Template:
    message = message_from_bytes(content, policy=_POLICY)
    if _sealed(message):
        return _wrapped(content, footer, placeholder, "sealed")
    malformed = _malformed(message)
    parts = _body_parts(message)
    if not parts:
        return _wrapped(content, footer, placeholder, "malformed" if malformed else "no_text")
    leaves = _leaves(message) if malformed else []
    nonce = secrets.token_hex(8)
    for number, part in enumerate(message.walk()):
        boundary = part.get_boundary() if part.is_multipart() else None
        if boundary is not None and len(boundary) > _LONGEST_BOUNDARY:
            # Its delimiter lines could not cross SMTP (998 octets) nor pass RFC 2046 (70):
            # the parts are written anew anyway, under a boundary of the rules' length.
            part.set_boundary(f"=_part_{nonce}_{number}")  # "=_": in no QP or base64 text
    slots = []
    for index, part in enumerate(parts):
        text, charset = _decode(part)
        html = part.get_content_subtype() == "html"
        marker = f"optin-relay-slot-{nonce}-{index}"
        body = _with_footer(text, footer, html=html)
        slots.append(_plan(part, body, charset, placeholder=placeholder, marker=marker))
    mime_headers = message.get("Content-Type") or message.get("Content-Transfer-Encoding")
    if mime_headers is not None and message.get("MIME-Version") is None:
        message["MIME-Version"] = "1.0"  # RFC 2045: without it, charset and encoding are ignored
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(message)
    skeleton = out.getvalue()
    if malformed and not _reads_back(skeleton, slots, leaves):
        return _wrapped(content, footer, placeholder, "malformed")
    return Template(skeleton, tuple(slots), None)


def _leaves(message: Message) -> list[tuple[str, object]]:
    """Every part that is not multipart, as a parser reads it: its type and its payload."""
    return [(part.get_content_type(), part.get_payload()) for part in message.walk()]


def _reads_back(skeleton: bytes, slots: list[_Slot], leaves: list[tuple[str, object]]) -> bool:
    """Whether malformed MIME, changed in place, parses into the parts it had, footers in place.

    Each text part must hold its slot's marker (the footer goes there), and every other part
    must come back as it was; else a reader would see another message than the sender's.
    """
    again = message_from_bytes(skeleton, policy=_POLICY)
    markers = [slot.marker.decode("ascii") for slot in slots]
    if [str(part.get_payload()).strip() for part in _body_parts(again)] != markers:
        return False
    found = _leaves(again)
    if [kind for kind, _ in found] != [kind for kind, _ in leaves]:
        return False
    # A body may come back with one more line end before its boundary (part of the boundary).
    return all(
        isinstance(payload, list)
        or str(payload).strip() in markers
        or str(payload).rstrip("\r\n") == str(was).rstrip("\r\n")
        for (_, payload), (_, was) in zip(found, leaves, strict=True)
    )


_ENTITY = (b"content-", b"mime-version")


def _wrapped(content: bytes, footer: Footer, placeholder: str | None, why: str) -> Template:
    """The original body as the first part of a multipart/mixed, the footer as a text/plain part.

    The body keeps every byte, and its Content-* fields go down with it; the other header
    fields stay on top. The boundary is random, so it occurs nowhere in the body.
    """
    header, body = split_message(content)
    top: list[bytes] = []
    entity: list[bytes] = []
    into = top
    for line in header.splitlines(keepends=True):
        if line.strip() == b"":
            continue
        if line[:1] not in (b" ", b"\t"):
            into = entity if line.lower().startswith(_ENTITY) else top
        into.append(line if line.endswith(b"\r\n") else line.rstrip(b"\r\n") + b"\r\n")
    entity = [line for line in entity if not line.lower().startswith(b"mime-version")]
    nonce = secrets.token_hex(12)
    boundary = f"optin-relay-{nonce}".encode("ascii")
    text = footer.text.replace("\n", "\r\n") + "\r\n"
    longest = max(
        len(line) + (_URL_ROOM if placeholder and placeholder in line else 0)
        for line in text.split("\r\n")
    )
    cte = "7bit" if text.isascii() and longest <= MAX_LINE else "quoted-printable"
    marker = f"optin-relay-slot-{nonce}-0".encode("ascii")
    skeleton = b"".join(
        [
            *top,
            b"MIME-Version: 1.0\r\n",
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n',
            b"--" + boundary + b"\r\n",
            *entity,
            b"\r\n",
            body,
            b"\r\n--" + boundary + b"\r\n",
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Transfer-Encoding: " + cte.encode("ascii") + b"\r\n",
            b"Content-Disposition: inline\r\n\r\n",
            marker,
            b"\r\n--" + boundary + b"--\r\n",
        ]
    )
    return Template(skeleton, (_Slot(marker, text, "utf-8", cte),), why)


def fill(
    template: Template, headers: list[bytes], substitutions: dict[str, str] | None = None
) -> Rendered:
    """One recipient's copy: the template's slots filled, then the unsubscribe headers."""
    content = template.skeleton
    if template.slots:
        pieces: list[bytes] = []
        rest = content
        for slot in template.slots:
            before, _, rest = rest.partition(slot.marker)
            text = slot.text
            for placeholder, value in (substitutions or {}).items():
                text = text.replace(placeholder, value)
            pieces += [before, _encode(slot, text)]
        content = b"".join([*pieces, rest])
    changed = 0 if template.footer_part else len(template.slots)
    return Rendered(replace_headers(content, headers), changed, template.footer_part)


def render(content: bytes, headers: list[bytes], footer: Footer) -> Rendered:
    """The copy with the unsubscribe headers and, where the body allows, the footer."""
    return fill(prepare(content, footer), headers)
