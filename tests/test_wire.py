"""The wire form: CRLF, lines of at most 998 octets, content kept wherever an encoding can."""

from __future__ import annotations

import base64
import re
from email import message_from_bytes
from email import policy as email_policy

from conftest import simple_message
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.mail.wire import MAX_LINE, has_long_lines, wire_form

WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.,;-", min_size=1, max_size=40)


def lines_of(content: bytes) -> list[bytes]:
    assert b"\n" not in content.replace(b"\r\n", b""), "a bare LF"
    return content.split(b"\r\n")


def longest(content: bytes) -> int:
    return max(len(line) for line in lines_of(content))


def unfolded(message: bytes, name: str) -> str:
    """The value of field `name`, unfolded (RFC 5322 2.2.3: CRLF before WSP removed)."""
    parsed = message_from_bytes(message, policy=email_policy.compat32)
    return re.sub(r"\r?\n(?=[ \t])", "", str(parsed[name]))


def test_a_message_within_the_limits_is_returned_as_it_is():
    """No long line, CRLF, 8-bit allowed: the very same bytes."""
    message = simple_message()
    assert wire_form(message) is message
    assert not has_long_lines(message)
    assert has_long_lines(b"a" * 999)
    assert not has_long_lines(b"a" * 998 + b"\r\n" + b"b" * 998)


def test_bare_line_feeds_become_crlf():
    """A bare LF (some submission libraries) goes out as CRLF."""
    assert wire_form(b"Subject: x\n\nbody\nmore\n") == b"Subject: x\r\n\r\nbody\r\nmore\r\n"


def test_long_text_line_becomes_quoted_printable_with_the_same_text():
    """A 7-bit text part with a 5,000-octet line: quoted-printable, decoding to the same text."""
    text = ("x" * 70 + " ") * 70 + "\r\nshort line\r\n"
    message = f"Subject: s\r\nContent-Type: text/plain\r\n\r\n{text}".encode()
    out = wire_form(message)
    assert longest(out) <= MAX_LINE
    parsed = message_from_bytes(out)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed["MIME-Version"] == "1.0"
    decoded = parsed.get_payload(decode=True).replace(b"\r\n", b"\n")
    assert decoded == text.replace("\r\n", "\n").encode()


def test_binary_part_with_a_long_line_becomes_base64():
    """A non-text 8-bit part with a long line: base64, the same bytes."""
    blob = bytes(range(1, 256)).replace(b"\r", b"").replace(b"\n", b"") * 20
    message = (
        b"Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + blob + b"\r\n"
    )
    out = wire_form(message)
    assert longest(out) <= MAX_LINE
    parsed = message_from_bytes(out)
    assert parsed["Content-Transfer-Encoding"] == "base64"
    assert parsed.get_payload(decode=True) == blob + b"\r\n"


def test_base64_on_one_line_is_wrapped():
    """A base64 part written as one long line is written again in 76-character lines."""
    blob = bytes(range(256)) * 20
    message = (
        b"Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: image/png\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(blob) + b"\r\n"
    )
    out = wire_form(message)
    assert longest(out) <= 76
    assert message_from_bytes(out).get_payload(decode=True) == blob


def test_header_without_whitespace_is_broken_as_postfix_does():
    """No whitespace to fold at: CRLF and a space are inserted (the one lossy case)."""
    token = "t" * 3000
    out = wire_form(f"X-Token: {token}\r\nSubject: s\r\n\r\nbody\r\n".encode())
    assert longest(out) <= MAX_LINE
    assert unfolded(out, "X-Token").replace(" ", "") == token
    assert out.endswith(b"Subject: s\r\n\r\nbody\r\n")


def test_unparseable_mime_still_leaves_in_short_lines():
    """A multipart without its boundary: the parts stay, the lines are broken as a last resort."""
    message = (
        b"Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n"
        + b"y" * 4000
        + b"\r\n"
    )
    out = wire_form(message)
    assert longest(out) <= MAX_LINE
    assert out.replace(b"\r\n ", b"").endswith(b"y" * 4000 + b"\r\n")


def test_seven_bit_converts_8bit_text_without_long_lines():
    """For an upstream without 8BITMIME: 8-bit text becomes quoted-printable."""
    message = "Subject: s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGr\u00fc\u00dfe\r\n"
    out = wire_form(message.encode(), seven_bit=True)
    assert out.isascii()
    assert message_from_bytes(out).get_payload(decode=True).decode() == "Gr\u00fc\u00dfe\r\n"
    assert wire_form(message.encode()) == message.encode()  # 8-bit is fine otherwise


@settings(max_examples=60, deadline=None)
@given(words=st.lists(WORD, min_size=1, max_size=400))
def test_folding_keeps_the_unfolded_value(words):
    """A long header with whitespace folds at whitespace: unfolding gives back the value."""
    value = " ".join(words)
    out = wire_form(f"Subject: {value}\r\nTo: a@example.net\r\n\r\nbody\r\n".encode())
    assert longest(out) <= MAX_LINE
    assert unfolded(out, "Subject") == value
    for line in lines_of(out.split(b"\r\n\r\n")[0]):
        assert line.strip(b" \t"), "a whitespace-only header line"


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=3000),
        min_size=1,
        max_size=8,
    ),
    html=st.booleans(),
)
def test_text_bodies_keep_their_text(lines, html):
    """Any ASCII body, any line lengths: lines of at most 998 octets, the same decoded text."""
    body = "\r\n".join(lines) + "\r\n"
    subtype = "html" if html else "plain"
    message = f"Subject: s\r\nContent-Type: text/{subtype}\r\n\r\n{body}".encode()
    out = wire_form(message)
    assert longest(out) <= MAX_LINE
    decoded = message_from_bytes(out).get_payload(decode=True)
    assert decoded.replace(b"\r\n", b"\n") == body.replace("\r\n", "\n").encode()


@settings(max_examples=150, deadline=None)
@given(content=st.binary(max_size=6000), seven_bit=st.booleans())
def test_any_input_leaves_in_short_crlf_lines(content, seven_bit):
    """Whatever the bytes, wire_form never raises and never emits a line over 998 octets."""
    out = wire_form(content, seven_bit=seven_bit)
    assert longest(out) <= MAX_LINE
