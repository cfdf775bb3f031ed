"""The relay's fast read of MAIL FROM / RCPT TO paths agrees with aiosmtpd's full parser."""

from __future__ import annotations

import re

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.delivery.dsn import build_dsn
from relay.delivery.upstream import SendResult
from relay.feedback.reports import read_dsn
from relay.smtp.addresses import refusal
from relay.smtp.server import RelaySMTP


def _parser(cls: type[SMTP], local_part_limit: int = 0) -> SMTP:
    """Only the path parser's state: a full protocol would make (and leak) an event loop."""
    smtp = object.__new__(cls)
    smtp.local_part_limit = local_part_limit
    return smtp


_FULL = _parser(SMTP)


def _full(arg: str) -> tuple[str | None, str | None]:
    """What aiosmtpd reads, where its parser crashing means a syntax error."""
    try:
        return _FULL._getaddr(arg)
    except (AttributeError, IndexError, ValueError):
        return None, None


def _fast(local_part_limit: int = 0) -> RelaySMTP:
    smtp = _parser(RelaySMTP, local_part_limit)
    assert isinstance(smtp, RelaySMTP)
    return smtp


EXAMPLES = [
    "<a@b.c>",
    "<a@b.c> SIZE=100",
    "<a.b+c@ex-ample.co.uk>  BODY=8BITMIME",
    "<a..b@c>",
    "<.a@b>",
    "<a@-b.c>",
    '<"q"@b>',
    "<a@[192.0.2.1]>",
    "<>",
    "<a@b.c>x",
    "<a@b.c>\tSIZE=1",
    "<a@b.c.>",
    "<@relay.example:a@b.c>",
    "<a(comment)@b.c>",
    "<a@b.c> (comment) SIZE=1",
    "<ü@b.c>",
    "<a@b.c>>",
    "<a b@c>",
]


def test_examples_read_alike():
    """Plain paths, parameters, and every shape the fast path hands to the full parser."""
    fast = _fast()
    for arg in EXAMPLES:
        assert fast._getaddr(arg) == _full(arg), arg


def test_a_path_the_parser_crashes_on_is_a_syntax_error():
    """`<0@[>` crashes the email package's parser; the relay reads it as no address at all."""
    assert _fast()._getaddr("<0@[>") == (None, None)


def test_local_part_limit_still_applies():
    """A local part over the limit is refused exactly as aiosmtpd refuses it."""
    arg = "<" + "x" * 65 + "@b.c>"
    limited = _parser(SMTP, 64)
    assert _fast(64)._getaddr(arg) == limited._getaddr(arg) == (None, None)


_PATH = st.from_regex(
    r"[ ]?<[a-zA-Z0-9.+\-_\"( )@\[\]:]{0,12}@[a-zA-Z0-9.\-\[\]]{0,12}>[ \t]{0,2}[A-Z=0-9( )]{0,8}",
    fullmatch=True,
)


@settings(max_examples=400, deadline=None)
@given(_PATH | st.text(max_size=30))
def test_any_argument_reads_alike(arg):
    """Whatever a client sends after FROM: or TO:, both read the same address and rest."""
    assert _fast()._getaddr(arg) == _full(arg)


# What the relay accepts at the door it can deliver, or at least bounce (issue 13, finding 2):
# any path `refusal` lets through goes into a DSN that the relay's own DSN reader reads back.
# What a path reader yields as a local part: no whitespace (unquoted), no angle brackets.
_LOCAL = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_categories=("Cs", "Zs", "Zl", "Zp"), exclude_characters="<> \t"
    ),
    min_size=1,
    max_size=70,
)
_DOMAIN = st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(local=_LOCAL, domain=_DOMAIN, smtputf8=st.booleans())
def test_an_accepted_recipient_can_be_bounced(local, domain, smtputf8):
    """An address `refusal` accepts has no control character, fits RFC 5321, and bounces."""
    address = f"{local}@{domain}"
    if refusal(address, smtputf8=smtputf8, recipient=True) is not None:
        return
    assert not re.search(r"[\x00-\x1f\x7f]", address)
    assert smtputf8 or address.isascii()
    assert len(address.encode()) <= 254
    dsn = build_dsn(
        reporting_host="relay.example",
        original=b"From: a@acme.example\r\nSubject: s\r\n\r\nbody\r\n",
        message_id="Q1",
        mail_from="a@acme.example",
        recipient=address,
        result=SendResult("permanent", "550 5.1.1 no such user"),
        arrival=1_800_000_000.0,
        now=1_800_000_060.0,
        expired=False,
    )
    [entry] = read_dsn(dsn) or []
    assert entry.final_recipient == address.lower()
    assert (entry.action, entry.status) == ("failed", "5.1.1")


@settings(max_examples=200, deadline=None)
@given(address=st.text(max_size=300), smtputf8=st.booleans(), recipient=st.booleans())
def test_refusal_answers_every_string(address, smtputf8, recipient):
    """Whatever the path, the door answers None or a 553 reply with its rule; it never raises."""
    answer = refusal(address, smtputf8=smtputf8, recipient=recipient)
    if answer is not None:
        reply, rule = answer
        assert reply.startswith("553 5.")
        assert rule.startswith("address_")
