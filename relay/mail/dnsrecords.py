"""DNS TXT records as mail authentication writes them: tag lists and zone-file lines."""

from __future__ import annotations

from typing import Literal


def tags(record: str) -> dict[str, str]:
    """The `tag=value` pairs of a DKIM or DMARC record (RFC 6376 3.2), names in lower case."""
    pairs = (part.split("=", 1) for part in record.split(";") if "=" in part)
    return {name.strip().lower(): value.strip() for name, value in pairs}


def key_of(record: str) -> str:
    """A DKIM record's public key (`p=`), its folding whitespace taken out."""
    return "".join(tags(record).get("p", "").split())


def key_published(records: list[str], public_record: str) -> Literal["ok", "missing", "failing"]:
    """Whether the TXT `records` at a selector publish a key: `ok`, `missing` or `failing`.

    `failing`: a record is there, with another key than `public_record`'s.
    """
    if not records:
        return "missing"
    expected = key_of(public_record)
    return "ok" if any(key_of(record) == expected for record in records) else "failing"


def txt_record(name: str, value: str) -> str:
    """A zone-file TXT record, split into strings of at most 255 characters."""
    chunks = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
    return f"{name}. IN TXT ( {chunks} )"
