"""SMTP ingress through the real server: AUTH, open-relay refusal, sender domains, limits."""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import tracemalloc

import aiosmtplib
import pytest
from conftest import (
    PASSWORD,
    PASSWORD_HASH,
    TestUpstream,
    assert_relayed_intact,
    config_data,
    eventually,
    settles,
    simple_message,
    smtp_client,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config import parse_config
from relay.feedback.reports import read_dsn
from relay.passwords import hash_password

LOGIN = ("acme-crm", PASSWORD)


@pytest.fixture
def data(store_url, upstream: TestUpstream, tls_files):
    """End to end on each storage backend."""
    return config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)


def plain_auth_data(sqlite_url, upstream, tls_files, **smtp):
    """A loopback listener without TLS that allows AUTH (allow_insecure_auth)."""
    return config_data(
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        listeners=[{"address": "127.0.0.1:0", "tls": "none", "allow_insecure_auth": True}],
        smtp=smtp,
    )


async def test_message_relayed_with_received_header_and_intact_body(
    start_relay, data, upstream: TestUpstream
):
    """An authenticated message reaches upstream with a Received header prepended, body intact."""
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    body = simple_message(body="Line one\r\n.dot-started line\r\n\r\nlast line")
    _, reply = await client.sendmail("news@acme.example", ["alice@example.net"], body)
    await client.quit()
    assert "queued as" in reply
    await eventually(lambda: len(upstream.messages) == 1)
    got = upstream.messages[0]
    # The envelope sender points bounces back at the relay (VERP), naming this recipient.
    assert re.fullmatch(r"bounce\+[a-z2-7]{29}@relay\.test\.example", got.mail_from)
    assert got.rcpt == "alice@example.net"
    # DKIM-Signature fields come first (added last, on the way out), then the trace field
    # with the same token, then our Received.
    unsigned = re.sub(
        rb"^DKIM-Signature:.*?\r\n(?=\S)", b"", got.content, flags=re.DOTALL | re.MULTILINE
    )
    trace, rest = unsigned.split(b"\r\n", 1)
    token = got.mail_from.split("+")[1].split("@")[0]
    assert trace == f"X-Optin-Trace: {token}".encode()
    first, rest = rest.split(b"\r\n", 1)
    assert first.startswith(b"Received: from ")
    assert b"by relay.test.example (optin-relay) with ESMTPSA id " in got.content
    assert_relayed_intact(got.content, body)
    assert rest.index(b"From: Acme News") > 0


async def test_unauthenticated_mail_gets_530(start_relay, data, log_lines):
    """Never an open relay: MAIL without AUTH is refused with 530 5.7.0."""
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0])
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await client.mail("news@acme.example")
    assert refused.value.code == 530
    assert refused.value.message.startswith("5.7.0")
    await client.quit()
    events = [e for e in log_lines() if e["event"] == "message_rejected"]
    assert events[0]["rule"] == "auth_required"
    assert events[0]["code"] == 530


async def test_wrong_password_gets_535(start_relay, data, log_lines):
    """Bad credentials get 535 5.7.8 and an auth_failed event without the password."""
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0])
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
        await client.auth_plain("acme-crm", "wrong-password-123")
    assert failed.value.code == 535
    assert failed.value.message.startswith("5.7.8")
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await client.auth_login("nobody", "whatever")
    await client.quit()
    failures = [e for e in log_lines() if e["event"] == "auth_failed"]
    assert [e["username"] for e in failures] == ["acme-crm", "nobody"]


async def test_auth_login_and_plain_both_work(start_relay, data):
    """AUTH LOGIN (what many CRMs speak) and AUTH PLAIN both authenticate."""
    relay = await start_relay(data)
    for mechanism in ("LOGIN", "PLAIN"):
        client = await smtp_client(relay.smtp_ports[0])
        if mechanism == "LOGIN":
            code, _ = await client.auth_login(*LOGIN)
        else:
            code, _ = await client.auth_plain(*LOGIN)
        assert code == 235
        await client.quit()


async def test_auth_before_starttls_is_refused(start_relay, data):
    """On a listener not configured for plaintext AUTH, AUTH before STARTTLS gets 538."""
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], starttls=False)
    await client.ehlo()
    assert not client.supports_extension("auth")
    assert client.supports_extension("starttls")
    token = base64.b64encode(f"\0{LOGIN[0]}\0{LOGIN[1]}".encode()).decode()
    response = await client.execute_command(b"AUTH", b"PLAIN", token.encode())
    assert response.code == 538
    await client.quit()


async def test_plaintext_auth_on_loopback_listener_when_configured(
    start_relay, sqlite_url, upstream, tls_files
):
    """A loopback listener with allow_insecure_auth accepts AUTH without TLS."""
    data = plain_auth_data(sqlite_url, upstream, tls_files)
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], starttls=False, login=LOGIN)
    await client.sendmail(
        "news@acme.example", ["bob@example.net"], simple_message(to="bob@example.net")
    )
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)


async def test_implicit_tls_listener(start_relay, sqlite_url, upstream, tls_files):
    """An implicit-TLS listener speaks TLS from the first byte and allows AUTH."""
    data = config_data(
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        listeners=[{"address": "127.0.0.1:0", "tls": "implicit"}],
    )
    relay = await start_relay(data)
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.smtp_ports[0], use_tls=True, validate_certs=False
    )
    await client.connect()
    await client.login(*LOGIN)
    await client.sendmail("news@acme.example", ["carol@example.net"], simple_message())
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)
    assert b"with ESMTPSA" in upstream.messages[0].content


async def test_envelope_sender_outside_from_domains_gets_550(start_relay, data, log_lines):
    """MAIL FROM in a domain the account does not own: 550 5.7.1."""
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await client.mail("news@globex.example")
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1")
    await client.quit()
    event = next(e for e in log_lines() if e["event"] == "message_rejected")
    assert event["rule"] == "from_domain.envelope"
    assert event["stage"] == "mail"
    assert event["account_id"] == "acme"


@pytest.mark.parametrize(
    ("headers", "rule"),
    [
        ("From: ceo@globex.example\r\n", "from_domain.header"),
        ("From: a@acme.example\r\nFrom: b@acme.example\r\n", "from_domain.header_count"),
        ("", "from_domain.header_count"),
        ("From: a@acme.example, spoof@globex.example\r\n", "from_domain.header"),
    ],
)
async def test_from_header_outside_from_domains_gets_550(
    start_relay, data, upstream, headers, rule, log_lines
):
    """The From header must be exactly one, in the account's domains: else 550 5.7.1 at DATA."""
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    message = f"{headers}To: x@example.net\r\nSubject: s\r\n\r\nbody\r\n".encode()
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await client.sendmail("news@acme.example", ["x@example.net"], message)
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1")
    await client.quit()
    event = next(e for e in log_lines() if e["event"] == "message_rejected")
    assert event["rule"] == rule
    assert event["stage"] == "data"
    await asyncio.sleep(0.1)
    assert upstream.messages == []


async def test_150_recipients_with_limit_100(start_relay, data, upstream):
    """100 RCPT accepted, each of the other 50 gets 452 4.5.3, the message reaches the 100."""
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.mail("news@acme.example")
    codes = []
    for n in range(150):
        response = await client.execute_command(f"RCPT TO:<user{n}@example.net>".encode())
        codes.append((response.code, response.message))
    assert [c for c, _ in codes[:100]] == [250] * 100
    assert all(code == 452 and msg.startswith("4.5.3") for code, msg in codes[100:])
    response = await client.data(simple_message(to="list@example.net"))
    assert response.code == 250
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 100)
    assert sorted(m.rcpt for m in upstream.messages) == sorted(
        f"user{n}@example.net" for n in range(100)
    )


async def test_size_advertised_and_enforced(start_relay, sqlite_url, upstream, tls_files):
    """SIZE is advertised; a declared or actual size over the limit gets 552 5.3.4."""
    data = config_data(
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        smtp={"max_message_size": 10_000},
    )
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    assert client.supports_extension("size")
    assert client.esmtp_extensions["size"] == "10000"
    response = await client.execute_command(b"MAIL FROM:<news@acme.example> SIZE=20000")
    assert (response.code, response.message[:5]) == (552, "5.3.4")
    # A client that does not declare SIZE is stopped at the end of DATA.
    await client.mail("news@acme.example")
    await client.rcpt("a@example.net")
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await client.data(simple_message(body=("x" * 900 + "\r\n") * 20))
    assert (refused.value.code, refused.value.message[:5]) == (552, "5.3.4")
    await client.quit()


async def test_an_oversized_message_is_discarded_while_it_is_read(
    start_relay, sqlite_url, upstream, tls_files
):
    """Without SIZE on MAIL, 32 MiB against a 1 MiB limit: 552 at the end, never held in memory.

    As Postfix, the relay reads to the end of DATA before it answers (RFC 5321 4.2.5), but it
    keeps nothing past the limit: the relay's peak of traced memory stays far below the data.
    The session goes on, and the next message is accepted.
    """
    data = config_data(
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        smtp={"max_message_size": 1024 * 1024},
    )
    relay = await start_relay(data)
    session, _ = await RawSession.open(relay.smtp_ports[0])
    assert (await session.send(b"MAIL FROM:<news@acme.example>"))[0].startswith(b"250")
    assert (await session.send(b"RCPT TO:<a@example.net>"))[0].startswith(b"250")
    assert (await session.send(b"DATA"))[0].startswith(b"354")
    line = b"x" * 998 + b"\r\n"
    chunk = simple_message() + line * 1000  # about 1 MiB
    tracemalloc.start()
    try:
        for _ in range(32):
            session.writer.write(chunk)
            await session.writer.drain()
        reply = await session.send(b".")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply[0].startswith(b"552 5.3.4"), reply
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while reading 32 MiB"
    assert (await session.send(b"MAIL FROM:<news@acme.example>"))[0].startswith(b"250")
    assert (await session.send(b"RCPT TO:<a@example.net>"))[0].startswith(b"250")
    assert (await session.send(b"DATA"))[0].startswith(b"354")
    assert (await session.send(simple_message() + b"."))[0].startswith(b"250")
    session.close()
    await eventually(lambda: len(upstream.messages) == 1)


@pytest.mark.parametrize(
    ("subject", "charset"),
    [
        ("hi", "iso-8882-1"),
        ("hi", "utf-8\\x00"),
        ("hi", "x" * 300),
        ("=?utf-8?b?#?=", "utf-8"),
        ("=?utf-8\x00?q?hi?=", "utf-8"),
    ],
)
async def test_an_unknown_charset_is_read_as_utf8_not_a_failure(
    start_relay, data, upstream, subject, charset, log_lines
):
    """A charset no codec knows, a garbled name, a broken encoded word: accepted and relayed.

    Found by fuzzing the render target: the campaign key's decode raised, so the CRM got 451 for
    a property of the message that never changes, and retried for ever.
    """
    relay = await start_relay(data)
    message = (
        f"From: news@acme.example\r\nTo: a@example.net\r\nSubject: {subject}\r\n"
        f'MIME-Version: 1.0\r\nContent-Type: text/plain; charset="{charset}"\r\n\r\n'
        "Gr\u00fc\u00dfe\r\n"
    ).encode("latin-1")
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.sendmail("news@acme.example", ["a@example.net"], message)
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)
    assert not [e for e in log_lines() if e["event"] == "smtp_exception"]


async def test_paths_the_parser_cannot_read_are_syntax_errors(start_relay, data, log_lines):
    """A path that crashes the email package's parser is refused as malformed.

    553 5.1.3, not 451 and a traceback; the session goes on and a correct path is accepted.
    """
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    response = await client.execute_command(b"MAIL FROM:<0@[>")
    assert (response.code, response.message[:5]) == (553, "5.1.3")
    await client.mail("news@acme.example")
    response = await client.execute_command(b"RCPT TO:<0@[>")
    assert (response.code, response.message[:5]) == (553, "5.1.3")
    await client.rcpt("a@example.net")
    await client.quit()
    assert not [e for e in log_lines() if e["event"] == "smtp_exception"]


class RawSession:
    """An SMTP session byte by byte: what aiosmtplib would refuse to send, or sends one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, login: tuple[str, str] = LOGIN) -> tuple[RawSession, bytes]:
        """Connect, STARTTLS, AUTH PLAIN; return the session and the EHLO reply after TLS."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        session = cls(reader, writer)
        await session.reply()  # greeting
        writer.write(b"EHLO crm.example\r\nSTARTTLS\r\n")
        await session.reply()
        assert (await session.reply())[0].startswith(b"220")
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        await writer.start_tls(context)
        ehlo = await session.send(b"EHLO crm.example")
        token = base64.b64encode(f"\0{login[0]}\0{login[1]}".encode())
        assert (await session.send(b"AUTH PLAIN " + token))[0].startswith(b"235")
        return session, b"".join(ehlo)

    async def reply(self) -> list[bytes]:
        lines = [await self.reader.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(await self.reader.readline())
        return lines

    async def send(self, command: bytes) -> list[bytes]:
        self.writer.write(command + b"\r\n")
        return await self.reply()

    def close(self) -> None:
        self.writer.close()


async def test_pipelined_submission(start_relay, data, upstream):
    """EHLO offers PIPELINING; MAIL, RCPT and DATA sent in one write are answered in order."""
    relay = await start_relay(data)
    session, ehlo = await RawSession.open(relay.smtp_ports[0])
    assert b"250-PIPELINING\r\n" in ehlo
    message = simple_message()
    session.writer.write(
        b"MAIL FROM:<news@acme.example>\r\nRCPT TO:<a@example.net>\r\n"
        b"RCPT TO:<b@example.net>\r\nDATA\r\n"
    )
    answers = [(await session.reply())[0][:3] for _ in range(4)]
    assert answers == [b"250", b"250", b"250", b"354"]
    session.writer.write(message + b".\r\nQUIT\r\n")
    assert (await session.reply())[0].startswith(b"250 2.0.0 Ok: queued as")
    assert (await session.reply())[0].startswith(b"221")
    session.close()
    await eventually(lambda: len(upstream.messages) == 2)
    assert sorted(m.rcpt for m in upstream.messages) == ["a@example.net", "b@example.net"]


async def test_a_connection_does_not_work_out_the_ehlo_hooks_signature_again(
    start_relay, data, monkeypatch
):
    """The EHLO hook keeps its signature, which aiosmtpd reads for each connection.

    With inspect unable to work a function's signature out, a connection is still served, and
    EHLO goes through the 5-argument hook (which offers PIPELINING).
    """
    import inspect

    relay = await start_relay(data)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a signature worked out while serving a connection")

    monkeypatch.setattr(inspect, "_signature_from_function", refuse)
    for _ in range(2):
        session, ehlo = await RawSession.open(relay.smtp_ports[0])
        assert b"250-PIPELINING\r\n" in ehlo
        session.close()


async def test_a_finished_connection_is_freed_without_the_garbage_collector(
    start_relay, data, upstream, monkeypatch
):
    """Each connection's objects go when it ends, by reference counting alone.

    With the collector off: a session that relays a message (STARTTLS, AUTH, QUIT) and one that
    leaves in the middle of DATA leave no protocol object behind once closed. (A failed TLS
    handshake still leaves its exception's frames to the collector: a rare path.)
    """
    import gc
    import weakref

    from relay.smtp.server import RelaySMTP

    relay = await start_relay(data)
    port = relay.smtp_ports[0]
    protocols: list[weakref.ref[RelaySMTP]] = []
    made = RelaySMTP.__init__

    def tracked(self: RelaySMTP, *args: object, **kwargs: object) -> None:
        made(self, *args, **kwargs)  # type: ignore[arg-type]
        protocols.append(weakref.ref(self))

    monkeypatch.setattr(RelaySMTP, "__init__", tracked)
    gc.collect()
    gc.disable()
    try:
        client = await smtp_client(port, login=LOGIN)
        await client.sendmail("news@acme.example", ["alice@example.net"], simple_message())
        await client.quit()
        session, _ = await RawSession.open(port)
        for command in (b"MAIL FROM:<news@acme.example>", b"RCPT TO:<a@example.net>", b"DATA"):
            await session.send(command)
        session.writer.write(b"Subject: cut short\r\n")
        await session.writer.drain()
        session.writer.transport.abort()
        await eventually(lambda: len(protocols) == 2 and all(p() is None for p in protocols))
    finally:
        gc.enable()
    await eventually(lambda: len(upstream.messages) == 1)


async def test_starttls_inside_tls_is_refused(start_relay, data, upstream, log_lines):
    """A second STARTTLS gets 554 5.5.1 (RFC 3207 4.2, as Postfix answers); the session goes on."""
    relay = await start_relay(data)
    session, ehlo = await RawSession.open(relay.smtp_ports[0])
    assert b"STARTTLS" not in ehlo
    assert (await session.send(b"STARTTLS"))[0].startswith(b"554 5.5.1")
    assert (await session.send(b"MAIL FROM:<news@acme.example>"))[0].startswith(b"250")
    assert (await session.send(b"RCPT TO:<a@example.net>"))[0].startswith(b"250")
    assert (await session.send(b"DATA"))[0].startswith(b"354")
    assert (await session.send(simple_message() + b"."))[0].startswith(b"250")
    session.close()
    await eventually(lambda: len(upstream.messages) == 1)
    assert not [e for e in log_lines() if e["event"] == "smtp_exception"]


async def test_client_gone_during_the_tls_handshake_is_a_warning(start_relay, data, log_lines):
    """A client that says STARTTLS, then sends garbage and leaves: a warning, no traceback."""
    relay = await start_relay(data)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.smtp_ports[0])
    await reader.readline()
    writer.write(b"EHLO crm.example\r\n")
    while (await reader.readline())[3:4] == b"-":
        pass
    writer.write(b"STARTTLS\r\n")
    assert (await reader.readline()).startswith(b"220")
    writer.write(b"this is not a TLS record\r\n" * 4)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the relay closed the connection
    writer.close()
    await eventually(lambda: any(e["event"] == "tls_handshake_failed" for e in log_lines()))
    events = log_lines()
    assert not [e for e in events if e["event"] == "smtp_exception"]
    failed = next(e for e in events if e["event"] == "tls_handshake_failed")
    assert (failed["level"], "exception" in failed) == ("warning", False)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"<a\x00b@example.net>", b"553 5.1.3"),
        (b"<a\x7fb@example.net>", b"553 5.1.3"),
        (b"<>", b"553 5.1.3"),
        ("<j\u00fcrgen@example.net>".encode(), b"553 5.6.7"),
        (b"<" + b"x" * 250 + b"@example.net>", b"553 5.1.3"),
    ],
    ids=["nul", "del", "null-path", "non-ascii-without-smtputf8", "too-long"],
)
async def test_recipients_that_cannot_be_delivered_are_refused_at_the_door(
    start_relay, data, upstream, log_lines, path, expected
):
    """What the relay could neither deliver nor bounce is refused at RCPT, never spooled."""
    relay = await start_relay(data)
    session, _ = await RawSession.open(relay.smtp_ports[0])
    assert (await session.send(b"MAIL FROM:<news@acme.example>"))[0].startswith(b"250")
    assert (await session.send(b"RCPT TO:" + path))[0].startswith(expected)
    assert (await session.send(b"RCPT TO:<fine@example.net>"))[0].startswith(b"250")
    session.close()
    events = [e for e in log_lines() if e["event"] == "recipient_rejected"]
    assert [e["rule"].startswith("address_") for e in events] == [True]


async def test_paths_that_are_not_utf8_are_refused_even_with_smtputf8(start_relay, data, log_lines):
    """Octets that are not UTF-8 in a path are refused at the door (553 5.6.7), not a 451.

    Found by the command-sequence property test in CI: such a path reached the store, whose
    UTF-8 encoding raised, and the client got 451 for a property of the address.
    """
    relay = await start_relay(data)
    session, _ = await RawSession.open(relay.smtp_ports[0])
    reply = await session.send(b"MAIL FROM:<\xff@acme.example> SMTPUTF8")
    assert reply[0].startswith(b"553 5.6.7")
    assert (await session.send(b"MAIL FROM:<news@acme.example> SMTPUTF8"))[0].startswith(b"250")
    assert (await session.send(b"RCPT TO:<a@\xfe\xff.example>"))[0].startswith(b"553 5.6.7")
    assert (await session.send(b"RCPT TO:<fine@example.net>"))[0].startswith(b"250")
    # aiosmtpd echoes what VRFY could not read: printable text only, never a crash.
    assert await session.send(b"VRFY <0@[>\x80\x1b") == [b"502 Could not VRFY <0@[>??\r\n"]
    session.close()
    rules = [
        e["rule"] for e in log_lines() if e["event"] in ("recipient_rejected", "message_rejected")
    ]
    assert rules == ["address_not_utf8", "address_not_utf8"]
    assert not [e for e in log_lines() if e["event"] == "smtp_exception"]


async def test_non_ascii_paths_with_smtputf8_are_accepted(start_relay, data, upstream):
    """With SMTPUTF8 on MAIL, a non-ASCII recipient is accepted and relayed (RFC 6531)."""
    relay = await start_relay(data)
    session, _ = await RawSession.open(relay.smtp_ports[0])
    assert (await session.send(b"MAIL FROM:<news@acme.example> SMTPUTF8"))[0].startswith(b"250")
    rcpt = "<j\u00fcrgen@example.net>".encode()
    assert (await session.send(b"RCPT TO:" + rcpt))[0].startswith(b"250")
    assert (await session.send(b"DATA"))[0].startswith(b"354")
    assert (await session.send(simple_message() + b"."))[0].startswith(b"250")
    session.close()
    await eventually(lambda: len(upstream.messages) == 1)
    assert upstream.messages[0].rcpt == "j\u00fcrgen@example.net"


async def test_a_refused_internationalised_recipient_gets_a_dsn(
    start_relay, data, upstream, log_lines
):
    """An SMTPUTF8 recipient the upstream refuses is bounced to the sender, never dead-lettered.

    The DSN names it with RFC 6533's `utf-8` address type in 7-bit form (found by the property
    test over accepted addresses: building the DSN raised), and the relay's DSN reader reads it.
    """
    upstream.reject["j\u00fcrgen@example.net"] = "550 5.1.1 no such user"
    relay = await start_relay(data)
    session, _ = await RawSession.open(relay.smtp_ports[0])
    assert (await session.send(b"MAIL FROM:<news@acme.example> SMTPUTF8"))[0].startswith(b"250")
    assert (await session.send("RCPT TO:<j\u00fcrgen@example.net>".encode()))[0].startswith(b"250")
    assert (await session.send(b"DATA"))[0].startswith(b"354")
    assert (await session.send(simple_message() + b"."))[0].startswith(b"250")
    session.close()
    await eventually(lambda: len(upstream.messages) == 1)  # the DSN, to the sender
    dsn = upstream.messages[0]
    assert dsn.rcpt == "news@acme.example"
    assert b"Final-Recipient: utf-8; j\\x{FC}rgen@example.net" in dsn.content
    assert [(e.final_recipient, e.status) for e in read_dsn(dsn.content) or []] == [
        ("j\u00fcrgen@example.net", "5.1.1")
    ]
    assert not [e for e in log_lines() if e["event"] == "delivery_dead_letter"]


async def test_a_bad_recipient_never_touches_another_accounts_mail(start_relay, data, upstream):
    """One tenant's NUL recipient never reaches another tenant's mail.

    Finding 1 of the hardening review: after it, 100 messages of another account over the same
    relay (one upstream connection) are all delivered, and none gets a DSN.
    """
    relay = await start_relay({**data, "upstream": {**data["upstream"], "connections": 1}})
    session, _ = await RawSession.open(relay.smtp_ports[0])
    assert (await session.send(b"MAIL FROM:<news@acme.example>"))[0].startswith(b"250")
    assert (await session.send(b"RCPT TO:<victim\x00@example.net>"))[0].startswith(b"553")
    assert (await session.send(b"RCPT TO:<fine@example.net>"))[0].startswith(b"250")
    assert (await session.send(b"DATA"))[0].startswith(b"354")
    assert (await session.send(simple_message() + b"."))[0].startswith(b"250")
    session.close()
    client = await smtp_client(relay.smtp_ports[0], login=("globex", PASSWORD))
    for n in range(100):
        await client.sendmail(
            "info@globex.example",
            [f"customer{n}@example.org"],
            simple_message(sender="info@globex.example", to=f"customer{n}@example.org"),
        )
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 101, timeout=60)
    assert sorted(m.rcpt for m in upstream.messages) == sorted(
        ["fine@example.net", *(f"customer{n}@example.org" for n in range(100))]
    )
    # The upstream has each copy before the store records it (the outcome is batched).
    await settles(relay.store.counts, {"delivered": 101})


async def test_8bitmime_and_smtputf8(start_relay, data, upstream):
    """8BITMIME and SMTPUTF8 are advertised; an internationalised address is relayed."""
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    assert client.supports_extension("8bitmime")
    assert client.supports_extension("smtputf8")
    body = (
        "From: news@acme.example\r\nTo: j\u00f6rg@example.net\r\n"
        "Subject: Gr\u00fc\u00dfe\r\n\r\nGr\u00fc\u00dfe\r\n"
    )
    await client.sendmail(
        "news@acme.example",
        ["j\u00f6rg@example.net"],
        body.encode(),
        mail_options=["SMTPUTF8", "BODY=8BITMIME"],
    )
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)
    assert upstream.messages[0].rcpt == "j\u00f6rg@example.net"
    relayed = upstream.messages[0].message
    assert "Subject: Gr\u00fc\u00dfe".encode() in upstream.messages[0].content  # raw UTF-8 kept
    # The footer re-encodes the 8-bit body as quoted-printable; the text is the same.
    assert relayed.get_payload(decode=True).decode().startswith("Gr\u00fc\u00dfe\r\n")


async def test_unexpected_error_answers_451_without_detail(start_relay, data, log_lines):
    """An exception in the handler is logged with its traceback; the client gets only 451 4.3.0."""
    relay = await start_relay(data)

    async def broken_spool(message):
        raise RuntimeError("internal detail the client must not see")

    relay.handler.store.spool = broken_spool
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await client.sendmail("news@acme.example", ["a@example.net"], simple_message())
    assert (refused.value.code, refused.value.message[:5]) == (451, "4.3.0")
    assert "internal detail" not in refused.value.message
    # The session survives: the client can go on.
    assert (await client.noop()).code == 250
    await client.quit()
    event = next(e for e in log_lines() if e["event"] == "smtp_exception")
    assert "internal detail" in event["exception"]


async def test_per_ip_connection_cap(start_relay, sqlite_url, upstream, tls_files, log_lines):
    """Over max_connections_per_ip, a new connection gets 421 4.7.0 and is closed.

    On uvloop, as `serve` runs by default (its transports are no asyncio.WriteTransport: the
    reply was once skipped there and the connection closed bare).
    """
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    data = config_data(
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        smtp={"max_connections_per_ip": 2},
    )
    relay = await start_relay(data)
    port = relay.smtp_ports[0]
    first = await smtp_client(port, starttls=False)
    second = await smtp_client(port, starttls=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    greeting = await reader.readline()
    assert greeting.startswith(b"421 4.7.0")
    assert await reader.read() == b""  # closed by the relay
    writer.close()
    await first.quit()
    await eventually(lambda: relay.handler.limiter.active("127.0.0.1") == 1)
    third = await smtp_client(port, starttls=False)
    assert (await third.noop()).code == 250
    await third.quit()
    await second.quit()
    assert any(e["event"] == "connection_refused" for e in log_lines())


async def test_failed_auth_throttle(start_relay, sqlite_url, upstream, tls_files, clock):
    """After N failures within the window: 421 4.7.0 and disconnect, until the window passes."""
    data = config_data(
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        smtp={"auth_failure_limit": 3, "auth_failure_window": 600},
    )
    relay = await start_relay(data)
    port = relay.smtp_ports[0]
    client = await smtp_client(port)
    for _ in range(2):
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
            await client.auth_plain("acme-crm", "guess")
        assert failed.value.code == 535
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as throttled:
        await client.auth_plain("acme-crm", "guess")
    assert (throttled.value.code, throttled.value.message[:5]) == (421, "4.7.0")
    await eventually(lambda: not client.is_connected)

    # Even the right password is refused from that address while the window lasts.
    again = await smtp_client(port)
    with pytest.raises(aiosmtplib.SMTPException):
        await again.auth_plain(*LOGIN)
    again.close()

    clock.advance(601)
    later = await smtp_client(port, login=LOGIN)
    await later.quit()


async def test_password_never_logged(start_relay, data, _json_logs):
    """Neither the password nor its base64 form appears in the log, whatever the outcome."""
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0])
    await client.auth_plain(*LOGIN)
    await client.quit()
    client = await smtp_client(relay.smtp_ports[0])
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await client.auth_login("acme-crm", "wrong-" + PASSWORD)
    await client.quit()
    output = _json_logs.getvalue()
    assert "auth_succeeded" in output
    assert PASSWORD not in output
    assert base64.b64encode(PASSWORD.encode()).decode() not in output
    assert base64.b64encode(f"\0acme-crm\0{PASSWORD}".encode()).decode() not in output


async def test_trusted_loopback_listener_needs_no_auth(
    start_relay, sqlite_url, upstream, tls_files
):
    """A loopback listener with trusted_account treats its clients as that account."""
    data = config_data(
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        listeners=[{"address": "127.0.0.1:0", "tls": "none", "trusted_account": "acme"}],
    )
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], starttls=False)
    await client.sendmail("news@acme.example", ["a@example.net"], simple_message())
    # Still that account's domains only.
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await client.mail("x@globex.example")
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)


async def test_reload_swaps_accounts(start_relay, data, upstream):
    """A reloaded config takes effect for new transactions; the old account is gone."""
    relay = await start_relay(data)
    new = dict(data)
    new["accounts"] = [dict(data["accounts"][0], username="acme-renamed")]
    relay.reload(parse_config(new))
    client = await smtp_client(relay.smtp_ports[0])
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await client.auth_plain(*LOGIN)
    await client.auth_plain("acme-renamed", PASSWORD)
    await client.quit()


async def test_password_rotation_accepts_either_hash_until_reload(start_relay, data):
    """With password_hash a list, old and new passwords both log in; a reload drops the old."""
    new_password = "n3w-Passw0rd-for-rotation"
    new_hash = hash_password(new_password)
    data["accounts"][0]["password_hash"] = [new_hash, PASSWORD_HASH]
    relay = await start_relay(data)
    for password in (PASSWORD, new_password):
        client = await smtp_client(relay.smtp_ports[0], login=("acme-crm", password))
        await client.quit()
    rotated = dict(data["accounts"][0], password_hash=new_hash)
    relay.reload(parse_config({**data, "accounts": [rotated]}))
    client = await smtp_client(relay.smtp_ports[0])
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await client.auth_plain(*LOGIN)
    await client.auth_plain("acme-crm", new_password)
    await client.quit()


def test_tls_context_refuses_old_protocols(tls_files):
    """The server context needs TLS 1.2 or newer."""
    from relay.tlsutil import server_context

    context = server_context(*tls_files)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    "from_header",
    [
        "From: J\u00f6rg Gr\u00fcn <news@acme.example>",
        "From: =?utf-8?q?J=C3=B6rg?= <news@acme.example>",
        'From: "Acme, Inc." <news@ACME.example>',
    ],
)
async def test_from_header_forms_accepted(start_relay, data, upstream, from_header):
    """Raw UTF-8 and encoded-word display names, quoted commas and case all pass."""
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    message = f"{from_header}\r\nTo: x@example.net\r\nSubject: s\r\n\r\nbody\r\n".encode()
    await client.sendmail(
        "news@acme.example", ["x@example.net"], message, mail_options=["BODY=8BITMIME"]
    )
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)


async def test_optional_auth_listener_is_not_an_open_relay(
    start_relay, sqlite_url, upstream, tls_files, log_lines
):
    """auth: optional accepts MAIL without AUTH, but no recipient outside the inbound domain."""
    data = config_data(
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        listeners=[{"address": "127.0.0.1:0", "tls": "starttls", "auth": "optional"}],
        inbound={"domain": "relay.test.example"},
    )
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0])
    await client.mail("someone@elsewhere.example")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as denied:
        await client.rcpt("victim@example.net")
    assert (denied.value.code, denied.value.message[:5]) == (554, "5.7.1")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as unknown:
        await client.rcpt("nobody@relay.test.example")
    assert (unknown.value.code, unknown.value.message[:5]) == (550, "5.1.1")
    response = await client.execute_command(b"DATA")
    assert response.code == 503
    await client.quit()
    rules = [e["rule"] for e in log_lines() if e["event"] == "recipient_rejected"]
    assert rules == ["relay_denied", "inbound_unknown"]
    # An authenticated client on the same listener relays as usual.
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.sendmail("news@acme.example", ["a@example.net"], simple_message())
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)


async def test_simultaneous_guesses_cannot_race_the_auth_throttle(
    start_relay, sqlite_url, upstream, tls_files, log_lines
):
    """45 connections from one address authenticating at the same moment (finding 3).

    One verification at a time per address, each seeing the failures before it: at most
    `auth_failure_limit` (5) passwords are verified, every other attempt (the right password
    among them) is throttled.
    """
    data = plain_auth_data(
        sqlite_url,
        upstream,
        tls_files,
        auth_failure_limit=5,
        auth_failure_window=600,
        max_connections_per_ip=100,
    )
    relay = await start_relay(data)
    port = relay.smtp_ports[0]
    sessions = []
    for _ in range(45):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()
        writer.write(b"EHLO crm.example\r\n")
        while (await reader.readline())[3:4] == b"-":
            pass
        sessions.append((reader, writer))
    guesses = [f"guess-{n}" for n in range(44)] + [PASSWORD]

    async def attempt(session, password: str) -> bytes:
        reader, writer = session
        token = base64.b64encode(f"\0acme-crm\0{password}".encode())
        writer.write(b"AUTH PLAIN " + token + b"\r\n")
        return (await reader.readline())[:3]

    codes = await asyncio.gather(*(attempt(s, p) for s, p in zip(sessions, guesses, strict=True)))
    for _, writer in sessions:
        writer.close()
    verified = [e for e in log_lines() if e["event"] in ("auth_failed", "auth_succeeded")]
    assert len(verified) <= 5
    assert set(codes) <= {b"535", b"421", b"235"}
    assert codes.count(b"421") >= 40  # throttled without a password check


async def test_simultaneous_correct_logins_all_succeed(
    start_relay, sqlite_url, upstream, tls_files
):
    """A CRM opening 20 sessions at once from one address: every one authenticates."""
    data = plain_auth_data(
        sqlite_url, upstream, tls_files, auth_failure_limit=5, max_connections_per_ip=100
    )
    relay = await start_relay(data)
    clients = await asyncio.gather(
        *(smtp_client(relay.smtp_ports[0], starttls=False, login=LOGIN) for _ in range(20))
    )
    assert all(client.is_connected for client in clients)
    for client in clients:
        await client.quit()


async def test_junk_commands_are_limited_between_messages(
    start_relay, sqlite_url, upstream, tls_files
):
    """NOOP cannot keep a session alive for ever (finding 7).

    Past the limit: 421 and the session closes; an accepted message starts the count again.
    """
    data = config_data(
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        smtp={"junk_command_limit": 5},
    )
    relay = await start_relay(data)
    session, _ = await RawSession.open(relay.smtp_ports[0])
    for _ in range(4):
        assert (await session.send(b"NOOP"))[0].startswith(b"250")
    assert (await session.send(b"RSET"))[0].startswith(b"250")
    assert (await session.send(b"MAIL FROM:<news@acme.example>"))[0].startswith(b"250")
    assert (await session.send(b"RCPT TO:<a@example.net>"))[0].startswith(b"250")
    assert (await session.send(b"DATA"))[0].startswith(b"354")
    assert (await session.send(simple_message() + b"."))[0].startswith(b"250")
    for _ in range(5):  # the count started again with the accepted message
        assert (await session.send(b"NOOP"))[0].startswith(b"250")
    assert (await session.send(b"NOOP"))[0].startswith(b"421 4.7.0")
    assert await asyncio.wait_for(session.reader.read(), 5) == b""
    session.close()


async def test_unqualified_postmaster_is_accepted(start_relay, data, upstream):
    """RCPT TO:<postmaster> without a domain reaches the relay's postmaster (RFC 5321 4.5.1)."""
    inbound = [{"address": "127.0.0.1:0", "tls": "starttls", "auth": "optional"}]
    relay = await start_relay({**data, "smtp": {**data["smtp"], "listeners": inbound}})
    client = await smtp_client(relay.smtp_ports[0])
    await client.mail("someone@example.org")
    response = await client.execute_command(b"RCPT TO:<postmaster>")
    assert response.code == 250
    response = await client.execute_command(b"RCPT TO:<Postmaster>")
    assert response.code == 250
    await client.quit()


async def test_deeply_nested_mime_is_refused_for_good(start_relay, data, upstream, log_lines):
    """MIME nested 1,000 deep: 554 5.6.0 (not 451 and a traceback), and the session goes on."""
    head = b"From: news@acme.example\r\nTo: a@example.net\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    body = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (n, n)
        for n in range(1000)
    )
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await client.sendmail("news@acme.example", ["a@example.net"], head + body + b"end\r\n")
    assert (refused.value.code, refused.value.message[:5]) == (554, "5.6.0")
    await client.sendmail("news@acme.example", ["a@example.net"], simple_message())
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)
    assert not [e for e in log_lines() if e["event"] == "smtp_exception"]


@pytest.fixture
def across_examples() -> dict[str, object]:
    """State a hypothesis test keeps from one example to the next (its examples share it)."""
    return {}


_VERBS = [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"VRFY", b"HELP"]
_VERBS += [b"AUTH PLAIN", b"AUTH LOGIN", b"STARTTLS", b"BDAT", b"XCLIENT", b"", b"EXPN"]
_COMMAND = st.tuples(
    st.sampled_from(_VERBS),
    st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(commands=st.lists(_COMMAND, min_size=1, max_size=12))
async def test_any_command_sequence_gets_replies_and_the_relay_goes_on(
    commands, start_relay, sqlite_url, upstream, tls_files, log_lines, across_examples
):
    """Arbitrary command lines on a real session: each gets a well-formed reply, no traceback.

    A property test over the SMTP command parser (issue 13): verbs the relay knows and does not,
    with arbitrary bytes after them; afterwards a correct transaction on a new session succeeds.
    """
    if "relay" not in across_examples:  # one relay for all examples
        across_examples["relay"] = await start_relay(
            plain_auth_data(sqlite_url, upstream, tls_files)
        )
    relay = across_examples["relay"]
    crashes_before = len([e for e in log_lines() if e["event"] == "smtp_exception"])
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.smtp_ports[0])
    session = RawSession(reader, writer)
    assert (await session.reply())[0].startswith(b"220")
    for verb, argument in commands:
        line = verb + (b" " + argument if argument and verb else argument)
        if verb == b"DATA":
            line = b"DATA"
        replies = await asyncio.wait_for(session.send(line), 10)
        last = replies[-1]
        assert re.match(rb"^[2-5]\d\d[ -]", last) or last == b"", (line, replies)
        if last == b"" or last.startswith(b"421"):
            break  # the relay closed the session (a limit): a new one follows
        if last.startswith(b"354"):
            assert (await session.send(simple_message() + b"."))[0][:1] in b"245"
    session.close()
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN, starttls=False)
    # A recipient of its own per example: one message to one person repeated is refused.
    across_examples["n"] = across_examples.get("n", 0) + 1
    after = f"after{across_examples['n']}@example.net"
    await client.sendmail("news@acme.example", [after], simple_message())
    await client.quit()
    # This example's own crashes (the relay and its log are shared by the examples).
    crashes = [e for e in log_lines() if e["event"] == "smtp_exception"][crashes_before:]
    assert not crashes, crashes[0].get("exception")
