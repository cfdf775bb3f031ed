"""Fuzz targets: what the relay does with a stranger's bytes, checked for its promises.

Each target takes one input and raises (an `AssertionError`, or whatever escaped) only when a
promise breaks. `tests/fuzz/run.py` drives them with atheris (coverage-guided, `make fuzz`);
`tests/test_fuzz_corpus.py` runs them over the kept corpus in every `make test`.

- `render`: a submission as the CRM sends it, through the DATA parse, the campaign key, the
  unsubscribe render and the wire form. Nothing raises; every line sent upstream has at most 998
  octets and ends in CRLF; the copy keeps the List-Unsubscribe fields.
- `reports`: a message to the feedback addresses, through the complaint reader, the DSN
  reader and the marker search. Nothing raises; every answer is one of the documented kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from relay.feedback.reports import bounce_class, read_complaint, read_dsn
from relay.mail import markers
from relay.mail.campaign import campaign_key, parse
from relay.mail.render import Footer, fill, list_unsubscribe_headers, prepare
from relay.mail.wire import MAX_LINE, wire_form

FOOTER = Footer(
    text="-- \nUnsubscribe: {url}\nAcme, 1 Main St",
    html='<p>Unsubscribe: <a href="{url}">here</a></p>',
)
PLACEHOLDER = "{url}"
URL = "https://relay.example/u/" + "T" * 100
HEADERS = list_unsubscribe_headers(URL, "unsub+abc@relay.example")
COMPLAINT_KINDS = frozenset(
    {"complaint", "unsubscribe", "not_complaint", "auto_reply", "no_report", "malformed"}
)


def render(data: bytes) -> None:
    """A submission through parse, campaign key, render and wire form."""
    seven_bit = data[:1] == b"7"
    campaign_key(parse(data))
    template = prepare(data, FOOTER, placeholder=PLACEHOLDER)
    copy = fill(template, HEADERS, {PLACEHOLDER: URL}).content
    assert copy.count(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click") == 1
    wire = wire_form(copy, seven_bit=seven_bit)
    assert b"\n" not in wire.replace(b"\r\n", b""), "a bare LF on the wire"
    longest = max(len(line) for line in wire.split(b"\r\n"))
    assert longest <= MAX_LINE, f"a line of {longest} octets on the wire"


def reports(data: bytes) -> None:
    """A feedback message through the complaint and DSN readers and the marker search."""
    report = read_complaint(data)
    assert report.kind in COMPLAINT_KINDS, report.kind
    entries = read_dsn(data)
    for entry in entries or []:
        assert bounce_class(entry) in ("hard", "soft", "none")
    text = data.decode("utf-8", "replace")
    for find in (
        markers.trace_tokens,
        markers.bounce_tokens,
        markers.unsubscribe_tokens,
        markers.queue_ids,
    ):
        for token in find(text):
            assert token
            assert token in text


TARGETS: dict[str, Callable[[bytes], None]] = {"render": render, "reports": reports}

_TESTS = Path(__file__).resolve().parents[1]
# Each target's seeds: its own corpus, and the real-world fixtures of its kind (not copied).
SEEDS: dict[str, list[Path]] = {
    "render": [
        _TESTS / "fuzz" / "corpus" / "render",
        _TESTS / "fixtures" / "mime",
        _TESTS / "fixtures" / "signed",
        _TESTS / "fixtures" / "dkim-vectors",
    ],
    "reports": [
        _TESTS / "fuzz" / "corpus" / "reports",
        _TESTS / "fixtures" / "arf",
        _TESTS / "fixtures" / "dsn",
    ],
}


def seed_files(name: str) -> list[Path]:
    """Every seed input of target `name`."""
    return sorted(f for folder in SEEDS[name] for f in folder.iterdir() if f.is_file())
