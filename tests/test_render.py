"""The unsubscribe render over real-world and generated MIME: the invariants of issue 3.

For every message: the copy parses; it has exactly one List-Unsubscribe (valid RFC 2369 syntax,
https first) and one List-Unsubscribe-Post; every inline text and HTML part outside signed,
encrypted and attached messages shows the link; every other part is identical after decoding;
signed bodies are byte-identical; no line exceeds 998 characters.
"""

from __future__ import annotations

import base64
import re
from email import message_from_bytes
from email import policy as email_policy
from email.message import Message

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from messages import (
    FIXTURE_FILES,
    FIXTURES,
    FOOTER,
    HEADERS,
    LU_SYNTAX,
    MAILTO,
    SEALED,
    URL,
    crlf,
    own_messages,
)

from relay.mail import render as render_module
from relay.mail.headers import split_message
from relay.mail.render import Footer, fill, list_unsubscribe_headers, prepare, render


def body_parts(part: Message) -> list[Message]:
    """Inline text parts the footer must reach (not attachments, not in attached messages)."""
    if part.get_content_maintype() == "message":
        return []
    if part.is_multipart():
        return [p for sub in part.get_payload() for p in body_parts(sub)]
    if part.get_content_disposition() == "attachment":
        return []
    return [part] if part.get_content_type() in ("text/plain", "text/html") else []


def other_leaves(message: Message) -> list[tuple[str, bytes | None]]:
    """Every leaf part that is not a body part, decoded, in order.

    Without its last line ends: in malformed MIME a body may come back with one more before the
    boundary that follows it (RFC 2046: that line end belongs to the boundary).
    """
    bodies = {id(p) for p in body_parts(message)}
    leaves = []
    for part in message.walk():
        if part.is_multipart() or id(part) in bodies:
            continue
        payload = part.get_payload(decode=True)
        leaves.append((part.get_content_type(), payload.rstrip(b"\r\n") if payload else payload))
    return leaves


def is_sealed(message: Message) -> bool:
    return any(p.get_content_type() in SEALED for p in message.walk())


def assert_footer_part(original: bytes, rendered: bytes) -> None:
    """The original body byte for byte as the first part, a text/plain footer as the second."""
    assert split_message(original)[1] in split_message(rendered)[1]
    after = message_from_bytes(rendered, policy=email_policy.compat32)
    assert after.get_content_type() == "multipart/mixed"
    _, footer = after.get_payload()
    assert footer.get_content_type() == "text/plain"
    assert URL in footer.get_payload(decode=True).decode("utf-8")
    kept = [
        f
        for f in split_message(original)[0].decode("latin-1").split("\r\n")
        if f[:8].lower() == "content-"
    ]
    for field in kept:  # the original's Content-* fields went down with its body
        assert field in split_message(rendered)[1].decode("latin-1")


def check_invariants(original: bytes, rendered: bytes) -> None:
    before = message_from_bytes(original, policy=email_policy.compat32)
    after = message_from_bytes(rendered, policy=email_policy.compat32)
    message_from_bytes(rendered, policy=email_policy.default)  # parses strictly too

    lu = after.get_all("List-Unsubscribe")
    assert lu is not None
    assert len(lu) == 1
    assert LU_SYNTAX.match(re.sub(r"\r\n[ \t]", " ", lu[0]).strip()), lu[0]
    assert after.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]

    for line in rendered.split(b"\r\n"):
        assert len(line) <= 998

    if is_sealed(before):
        assert_footer_part(original, rendered)
        return
    if after.get_content_type() == "multipart/mixed" and str(after.get_boundary()).startswith(
        "optin-relay-"
    ):  # malformed MIME that would not read back the same: the footer in a part of its own
        assert_footer_part(original, rendered)
        return
    for part in body_parts(after):
        text = part.get_payload(decode=True).decode(part.get_content_charset() or "ascii")
        assert URL in text, part.get_content_type()
    assert other_leaves(after) == other_leaves(before)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixture_invariants(path):
    """Every shared fixture message renders with the invariants."""
    original = crlf(path.read_bytes())
    rendered = render(original, HEADERS, FOOTER)
    check_invariants(original, rendered.content)


@pytest.mark.parametrize(("name", "original"), sorted(own_messages().items()))
def test_own_set_invariants(name, original):
    """The issue's own message set renders with the invariants, and gets a footer."""
    rendered = render(original, HEADERS, FOOTER)
    check_invariants(original, rendered.content)
    assert rendered.parts_changed >= 1
    assert rendered.footer_part is None


def test_signed_message_gets_the_footer_in_a_part_of_its_own():
    """multipart/signed: the signed entity byte for byte one level down, a footer part beside."""
    original = crlf((FIXTURES / "signed" / "mimekit-thunderbird-signed.txt").read_bytes())
    rendered = render(original, HEADERS, FOOTER)
    assert rendered.footer_part == "sealed"
    assert rendered.parts_changed == 0
    assert_footer_part(original, rendered.content)
    signed = message_from_bytes(rendered.content, policy=email_policy.compat32).get_payload(0)
    assert signed.get_content_type() == "multipart/signed"


def test_existing_headers_are_replaced():
    """The sender's own List-Unsubscribe fields (any case, folded) are gone."""
    original = own_messages()["existing-list-unsubscribe"]
    rendered = render(original, HEADERS, FOOTER).content
    assert b"crm.example" not in rendered
    assert rendered.count(b"List-Unsubscribe:") == 1
    assert rendered.lower().count(b"list-unsubscribe-post:") == 1


def test_html_footer_goes_before_body_end():
    """In HTML the footer sits just before </body>."""
    original = own_messages()["html-newsletter"]
    part = message_from_bytes(render(original, HEADERS, FOOTER).content)
    html = part.get_payload(decode=True).decode()
    assert html.index(URL) < html.index("</body>")
    assert html.rstrip().endswith("</html>")


def test_latin1_footer_text_changes_charset_when_needed():
    """Text that the part's charset cannot carry switches the part to UTF-8 quoted-printable."""
    original = (
        b"From: news@acme.example\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nHello\r\n"
    )
    rendered = message_from_bytes(render(original, HEADERS, FOOTER).content)
    assert rendered.get_content_charset() == "utf-8"
    assert rendered["Content-Transfer-Encoding"] == "quoted-printable"
    assert "\u00c9tat" in rendered.get_payload(decode=True).decode("utf-8")


def test_malformed_mime_without_a_text_part_gets_a_footer_part():
    """A multipart without its boundary: a footer part beside the body, reason 'malformed'."""
    original = (
        b"From: news@acme.example\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="nope"\r\n\r\nno boundary here\r\n'
    )
    rendered = render(original, HEADERS, FOOTER)
    assert rendered.footer_part == "malformed"
    assert_footer_part(original, rendered.content)
    assert rendered.content.count(b"List-Unsubscribe:") == 1


def test_a_nested_multipart_reusing_its_parents_boundary_gets_footers_in_place():
    """CPython's msg_15 (Outlook Express): text/plain and text/html both get the link.

    Python's own parser finds both parts; they were left without a footer (malformed). Changed
    in place, the copy reads back into the same parts, the GIF attachment untouched.
    """
    original = crlf((FIXTURES / "mime-extra" / "cpython-msg_15.eml").read_bytes())
    rendered = render(original, HEADERS, FOOTER)
    assert (rendered.parts_changed, rendered.footer_part) == (2, None)
    after = message_from_bytes(rendered.content, policy=email_policy.compat32)
    texts = [
        p.get_payload(decode=True).decode("iso-8859-1")
        for p in after.walk()
        if p.get_content_type() in ("text/plain", "text/html")
    ]
    assert len(texts) == 2
    assert all(URL in text for text in texts)
    before = message_from_bytes(original, policy=email_policy.compat32)
    assert other_leaves(after) == other_leaves(before)


def test_list_unsubscribe_syntax():
    """The https URI first, then mailto, folded only between items, no spaces inside brackets."""
    lu, lup = list_unsubscribe_headers(URL, MAILTO)
    assert lu == f"List-Unsubscribe: <{URL}>,\r\n <mailto:{MAILTO}>\r\n".encode()
    assert lup == b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    assert list_unsubscribe_headers(URL, None)[0] == f"List-Unsubscribe: <{URL}>\r\n".encode()


# --- generated MIME trees ---

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r"),
    max_size=300,
)
_charset = st.sampled_from(["utf-8", "iso-8859-1", "us-ascii", "windows-1252", "shift_jis"])
_cte = st.sampled_from(["7bit", "8bit", "quoted-printable", "base64"])


@st.composite
def leaf(draw) -> Message:
    kind = draw(st.sampled_from(["plain", "html", "attachment", "image", "text-attachment"]))
    part = Message()
    if kind in ("plain", "html", "text-attachment"):
        charset = draw(_charset)
        text = draw(_text)
        try:
            text.encode(charset)
        except UnicodeEncodeError:
            charset = "utf-8"
        if kind == "html" and draw(st.booleans()):
            text = f"<html><body>{text}</body></html>"
        subtype = "html" if kind == "html" else "plain"
        part["Content-Type"] = f"text/{subtype}; charset={charset}"
        cte = draw(_cte)
        if cte == "7bit" and not text.isascii():
            cte = "quoted-printable"
        data = text.replace("\n", "\r\n").encode(charset)
        if cte == "base64":
            payload = base64.encodebytes(data).decode().replace("\n", "\r\n")
        elif cte == "quoted-printable":
            from email.quoprimime import body_encode

            payload = body_encode(data.decode("latin-1"), eol="\r\n")
        else:
            lines = data.decode(charset).split("\r\n")
            if max(map(len, lines)) > 900:
                cte = "base64"
                payload = base64.encodebytes(data).decode().replace("\n", "\r\n")
            else:
                payload = data.decode("ascii", "surrogateescape")  # raw 8-bit, as parsed
        part["Content-Transfer-Encoding"] = cte
        if kind == "text-attachment":
            part["Content-Disposition"] = 'attachment; filename="notes.txt"'
        part.set_payload(payload)
    else:
        blob = draw(st.binary(max_size=200))
        part["Content-Type"] = "application/octet-stream" if kind == "attachment" else "image/png"
        part["Content-Transfer-Encoding"] = "base64"
        part["Content-Disposition"] = (
            'attachment; filename="a.bin"' if kind == "attachment" else "inline"
        )
        part.set_payload(base64.encodebytes(blob).decode().replace("\n", "\r\n"))
    return part


def container(children: list[Message], subtype: str) -> Message:
    part = Message()
    part["Content-Type"] = f"multipart/{subtype}"
    part.set_payload([])
    for child in children:
        part.attach(child)
    return part


def attached_message(inner: Message) -> Message:
    part = Message()
    part["Content-Type"] = "message/rfc822"
    part.set_payload([inner])
    return part


tree = st.recursive(
    leaf(),
    lambda children: st.one_of(
        st.builds(
            container,
            st.lists(children, min_size=1, max_size=4),
            st.sampled_from(["mixed", "alternative", "related"]),
        ),
        st.builds(attached_message, children),
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(root=tree)
def test_generated_trees_hold_the_invariants(root):
    """Any tree of text, HTML, attachments, nested multiparts and attached messages."""
    root["From"] = "news@acme.example"
    root["MIME-Version"] = "1.0"
    original = root.as_bytes(policy=email_policy.compat32.clone(linesep="\r\n"))
    rendered = render(original, HEADERS, FOOTER)
    check_invariants(original, rendered.content)


@pytest.mark.parametrize(("name", "original"), sorted(own_messages().items()))
def test_prepared_template_fills_like_a_direct_render(name, original):
    """Prepared once and filled per recipient gives the copy a direct render gives.

    Same bytes, except that the template may choose quoted-printable where a direct render with
    a short URL fits 7bit (it keeps room for any URL length).
    """
    placeholder = "PLACEHOLDER-0f1e2d"
    template = prepare(
        original,
        Footer(FOOTER.text.replace(URL, placeholder), FOOTER.html.replace(URL, placeholder)),
        placeholder=placeholder,
    )
    for token in ("short", "a-much-longer-token-" * 8):
        url = f"https://relay.test.example/u/{token}"
        footer = Footer(FOOTER.text.replace(URL, url), FOOTER.html.replace(URL, url))
        headers = list_unsubscribe_headers(url, None)
        direct = render(original, headers, footer)
        filled = fill(template, headers, {placeholder: url})
        if filled.content != direct.content:
            decoded = [
                (p.get_content_type(), p.get_payload(decode=True))
                for p in message_from_bytes(filled.content).walk()
            ]
            expected = [
                (p.get_content_type(), p.get_payload(decode=True))
                for p in message_from_bytes(direct.content).walk()
            ]
            assert decoded == expected
            assert b"quoted-printable" in filled.content


@given(st.binary(max_size=2000))
@settings(max_examples=200, deadline=None)
def test_any_bytes_render_without_crashing(raw):
    """Arbitrary bytes never crash the render; the copy always gets exactly one header each."""
    content = b"From: news@acme.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + raw
    rendered = render(content, HEADERS, FOOTER)
    assert rendered.content.count(b"List-Unsubscribe:") == 1


def test_plain_rfc822_message_becomes_mime_when_needed():
    """A message without MIME headers gets MIME-Version once the footer needs a charset."""
    ascii_only = b"From: news@acme.example\r\nSubject: hi\r\n\r\nHello\r\n"
    plain_footer = Footer(text=f"Unsubscribe: {URL}", html="")
    untouched = message_from_bytes(render(ascii_only, HEADERS, plain_footer).content)
    assert untouched["MIME-Version"] is None
    assert untouched["Content-Transfer-Encoding"] is None
    needs_utf8 = message_from_bytes(render(ascii_only, HEADERS, FOOTER).content)
    assert needs_utf8["MIME-Version"] == "1.0"
    assert needs_utf8.get_content_charset() == "utf-8"
    assert "\u00c9tat" in needs_utf8.get_payload(decode=True).decode()


ASCII_FOOTER = Footer(
    text=f"You get this because you subscribed. Unsubscribe: {URL}",
    html=f'<p>You get this because you subscribed. <a href="{URL}">Unsubscribe</a></p>',
)
SIMPLE = {
    "plain": b"From: news@acme.example\r\nSubject: Hi\r\n\r\nHello reader,\r\nnews.\r\n",
    "plain-mime-8bit": (
        b"From: news@acme.example\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        b"X-Long: " + b"x" * 300 + b"\r\n\r\nHello reader, news.\r\n"
    ),
    "html": (
        b"From: news@acme.example\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n"
        b"<html><body><p>Hello</p></body></html>\r\n"
    ),
    "no-final-newline": b"From: news@acme.example\r\n\r\nHello",
}
NOT_SIMPLE = {
    "quoted-printable": (
        b"From: a@acme.example\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nHello=20reader\r\n"
    ),
    "8bit-body": "From: a@acme.example\r\n\r\nGrüße\r\n".encode(),
    "bare-lf": b"From: a@acme.example\nSubject: x\n\nHello\n",
    "multipart": (
        b"From: a@acme.example\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nHi\r\n--b--\r\n"
    ),
    "attachment": (
        b"From: a@acme.example\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
        b"Content-Disposition: attachment; filename=a.txt\r\n\r\nHi\r\n"
    ),
    "latin-1": (
        b"From: a@acme.example\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nHi\r\n"
    ),
    "long-line": b"From: a@acme.example\r\n\r\n" + b"y" * 999 + b"\r\n",
    "content-type-without-mime-version": (
        b"From: a@acme.example\r\nContent-Type: text/plain\r\n\r\nHi\r\n"
    ),
}


def _full_path(original: bytes, footer: Footer, placeholder: str) -> bytes:
    template = render_module._prepare(original, footer, placeholder)
    return fill(template, HEADERS, {placeholder: URL}).content


@pytest.mark.parametrize("name", sorted(SIMPLE))
def test_simple_text_fast_path_renders_as_the_full_path(name):
    """A single-part ASCII text message: headers kept byte for byte.

    The body is what the full path makes of it (the same decoded text), with every invariant.
    """
    original, placeholder = SIMPLE[name], "PLACEHOLDER-9a8b"
    footer = Footer(
        ASCII_FOOTER.text.replace(URL, placeholder), ASCII_FOOTER.html.replace(URL, placeholder)
    )
    template = render_module._prepare_simple(original, footer, placeholder)
    assert template is not None
    fast = fill(template, HEADERS, {placeholder: URL}).content
    check_invariants(original, fast)
    full = message_from_bytes(_full_path(original, footer, placeholder))
    assert message_from_bytes(fast).get_payload(decode=True) == full.get_payload(decode=True)
    header = split_message(original)[0]
    assert split_message(fast)[0] == header + b"".join(HEADERS)


@pytest.mark.parametrize("name", sorted(NOT_SIMPLE))
def test_other_messages_take_the_full_path(name):
    """Anything else goes through the parse-and-regenerate path.

    Encodings, 8-bit text, bare LF, multipart, attachments, other charsets, long lines and MIME
    fields without MIME-Version.
    """
    original = NOT_SIMPLE[name]
    assert render_module._prepare_simple(original, ASCII_FOOTER, None) is None
    check_invariants(original, render(original, HEADERS, ASCII_FOOTER).content)


def test_non_ascii_footer_takes_the_full_path():
    """A footer that needs a charset is the full path's to encode."""
    assert render_module._prepare_simple(SIMPLE["plain"], FOOTER, None) is None
