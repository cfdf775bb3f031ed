"""76 real messages from 16 projects' test corpora, relayed: every displayed text part has the link.

`tests/fixtures/mime-extra/` (sources and licenses in its MANIFEST.tsv): malformed structures,
reused boundaries, UTF-16 parts, empty multipart/related, signed mail, message/partial. Each is
sent through the real server as the account's (its From set to the account's domain, nothing
else changed), and each relayed copy must verify (DKIM) and carry the unsubscribe link in every
text part a mail client displays (text/plain and text/html outside attached messages, reports
and signed or encrypted parts, as Python's email parser walks them), or, where no part could
safely take it, in a text/plain part of its own beside the original body, which is kept byte
for byte. `explain` says which.
"""

from __future__ import annotations

import re
from email import message_from_bytes
from email import policy as email_policy
from email.message import Message
from pathlib import Path

import dkim
from conftest import PASSWORD, config_data, dkim_dns, eventually, settles, smtp_client
from messages import crlf

from relay.cli.explain import render as render_story
from relay.cli.explain import story
from relay.mail.headers import split_message

CORPUS = Path(__file__).parent / "fixtures" / "mime-extra"
MESSAGES = sorted(CORPUS.glob("*.eml"))
LINK = re.compile(r"https://relay\.test\.example/u/[A-Za-z0-9_-]+")
_HIDDEN = {"multipart/signed", "multipart/encrypted", "multipart/report"}
_FROM = re.compile(rb"^From:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", re.MULTILINE | re.IGNORECASE)


def displayed(part: Message) -> list[Message]:
    """The text parts a mail client shows, as Python's parser walks the message."""
    if part.get_content_type() in _HIDDEN or part.get_content_maintype() == "message":
        return []
    if part.is_multipart():
        return [p for sub in part.get_payload() for p in displayed(sub)]
    if part.get_content_disposition() == "attachment":
        return []
    return [part] if part.get_content_type() in ("text/plain", "text/html") else []


def text_of(part: Message) -> str:
    data = part.get_payload(decode=True) or b""
    try:
        return data.decode(part.get_content_charset() or "latin-1")
    except (LookupError, UnicodeDecodeError):
        return data.decode("latin-1")


def as_the_account(raw: bytes) -> bytes:
    """The message with one From field of the account's (the relay checks it); nothing else."""
    header, body = split_message(crlf(raw))
    header = _FROM.sub(b"", header)
    return b"From: Acme News <news@acme.example>\r\n" + header + b"\r\n" + body


def check_copy(name: str, sent: bytes, relayed: bytes) -> str:
    """Where the footer went in one relayed copy: `in_parts` or `own_part` (asserting it)."""
    # Read as a mail client reads it: the header unfolded (RFC 5322 2.2.3; the relay folds lines
    # over 998 octets, a 7,000-character boundary parameter too), the parts as compat32 finds them.
    header, body = split_message(relayed)
    copy = message_from_bytes(
        re.sub(rb"\r\n(?=[ \t])", b"", header) + b"\r\n" + body, policy=email_policy.compat32
    )
    if not str(copy.get_boundary()).startswith("optin-relay-"):
        parts = displayed(copy)
        if parts:
            assert all(LINK.search(text_of(p)) for p in parts), name
        else:  # a report's own text part took it (reports are not counted as displayed)
            assert any(
                LINK.search(text_of(p)) for p in copy.walk() if p.get_content_maintype() == "text"
            ), name
        return "in_parts"
    # The footer in a part of its own: the original body byte for byte, then the footer part.
    assert copy.get_content_type() == "multipart/mixed", name
    assert split_message(sent)[1] in relayed, name
    footer = copy.get_payload()[-1]
    assert footer.get_content_type() == "text/plain", name
    assert LINK.search(text_of(footer)), name
    return "own_part"


async def test_the_real_world_corpus_relays_with_a_link_in_every_displayed_part(
    start_relay, sqlite_url, upstream, tls_files
):
    """Every message relays and verifies; every displayed text part carries the link."""
    assert len(MESSAGES) == 76
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    data["smtp"]["max_message_size"] = 50 * 1024 * 1024
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=("acme-crm", PASSWORD))
    sent: dict[str, tuple[bytes, str]] = {}
    for number, path in enumerate(MESSAGES):  # a reader each: similar test mail is one campaign
        content = as_the_account(path.read_bytes())
        reader = [f"reader{number}@example.net"]
        _, reply = await client.sendmail("news@acme.example", reader, content)
        sent[path.name] = (content, reply.rsplit(" ", 1)[1])
    await client.quit()
    await eventually(lambda: len(upstream.messages) == len(MESSAGES), timeout=60)

    dns = dkim_dns(relay.config)
    by_id = {}
    for message in upstream.messages:
        queue_id = re.search(rb"\(optin-relay\) with \w+ id (\w+);", message.content)
        assert queue_id is not None
        by_id[queue_id.group(1).decode()] = message.content
    where: dict[str, str] = {}
    for name, (content, queue_id) in sent.items():
        relayed = by_id[queue_id]
        assert dkim.verify(relayed, dnsfunc=dns), name
        where[name] = check_copy(name, content, relayed)
    own = sorted(name for name, place in where.items() if place == "own_part")
    # Signed mail, mail with no text part, and malformed MIME that would not read back alike.
    assert own == [
        "flanker-outlook-express.eml",
        "mimekit-message-partial.0.eml",
        "postalmime-mimetorture.eml",
        "rubymail-raw_email7.eml",
        "rubymail-raw_email_with_nested_attachment.eml",
        "zbateson-m4006.eml",
    ]
    # explain says where the footer went, and why: once each outcome is recorded (the upstream
    # has the copy a moment before the relay writes its 250 and the render notes).
    await settles(relay.store.counts, {"delivered": len(MESSAGES)}, timeout=30)
    told = render_story(await story(sent["cpython-msg_15.eml"][1], relay.store))
    assert "footer in 2 text parts" in told
    told = render_story(await story(sent["zbateson-m4006.eml"][1], relay.store))
    assert "footer in a text/plain part of its own (it has no text part)" in told
