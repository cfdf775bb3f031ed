"""The header block of a message as bytes: split it off, drop fields from it, read its From domain.

The render (List-Unsubscribe fields) and the DKIM policy (signatures that rewriting broke) drop
fields with the same routine, so the two can never disagree on what a field or its folded
continuation is.
"""

from __future__ import annotations

import re
from email.utils import getaddresses

_FROM_FIELD = re.compile(
    rb"^from[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE
)


def split_message(content: bytes) -> tuple[bytes, bytes]:
    """The header block (with its final line end) and the body (after the empty line)."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        index = content.find(separator)
        if index != -1:
            cut = index + len(separator)
            return content[: cut - len(separator) // 2], content[cut:]
    return content if content.endswith(b"\n") else content + b"\r\n", b""


def drop_fields(
    content: bytes, names: frozenset[bytes], *, add: tuple[bytes, ...] = ()
) -> tuple[bytes, int]:
    """The message without the top-level fields named in `names` (lower case), `add` appended.

    Returns the new message and how many fields were dropped; the message itself, unchanged,
    when there was nothing to drop or add.
    """
    header, body = split_message(content)
    kept: list[bytes] = []
    removed = 0
    dropping = False
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):  # continuation of the field before
            if not dropping:
                kept.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().lower() in names
        removed += dropping
        if not dropping:
            kept.append(line)
    if not removed and not add:
        return content, 0
    return b"".join(kept) + b"".join(add) + b"\r\n" + body, removed


def from_domain(content: bytes) -> str | None:
    """The lower-case domain of the message's (first) From address."""
    header, _ = split_message(content)
    match = _FROM_FIELD.search(header)
    if match is None:
        return None
    value = match.group(1).decode("utf-8", "replace").replace("\r", "").replace("\n", "")
    addresses = [addr for _, addr in getaddresses([value]) if "@" in addr]
    return addresses[0].rpartition("@")[2].lower() if addresses else None
