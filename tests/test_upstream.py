"""The upstream client: TLS none / opportunistic / required, AUTH, connection reuse."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import TestUpstream, simple_message
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import UpstreamConfig
from relay.delivery.upstream import SmtpUpstream
from relay.tlsutil import server_context


def upstream_config(port: int, **options) -> UpstreamConfig:
    return UpstreamConfig(host="127.0.0.1", port=port, **options)


@pytest.fixture
async def tls_upstream(tls_files):
    """A test upstream offering STARTTLS with the test certificate."""
    up = TestUpstream()
    await up.start(tls_context=server_context(*tls_files))
    yield up
    await up.stop()


async def test_required_tls_verifies_certificate(tls_upstream, tls_files):
    """tls: required with the CA file: STARTTLS, verified, delivered."""
    client = SmtpUpstream(
        upstream_config(tls_upstream.port, tls="required", ca_file=tls_files[0]), "relay.test"
    )
    result = await client.send("a@acme.example", "b@example.net", simple_message())
    await client.close()
    assert result.outcome == "delivered"
    assert len(tls_upstream.messages) == 1


async def test_required_tls_refuses_untrusted_certificate(tls_upstream):
    """tls: required without trusting the certificate: a temporary failure, nothing sent."""
    client = SmtpUpstream(upstream_config(tls_upstream.port, tls="required"), "relay.test")
    result = await client.send("a@acme.example", "b@example.net", simple_message())
    await client.close()
    assert result.outcome == "transient"
    assert tls_upstream.messages == []


async def test_required_tls_fails_without_starttls(upstream):
    """tls: required against an upstream without STARTTLS never sends in clear."""
    client = SmtpUpstream(
        upstream_config(upstream.port, tls="required", verify_certificate=False), "relay.test"
    )
    result = await client.send("a@acme.example", "b@example.net", simple_message())
    await client.close()
    assert result.outcome == "transient"
    assert upstream.messages == []


async def test_opportunistic_with_and_without_starttls(upstream, tls_upstream):
    """tls: opportunistic delivers whether or not STARTTLS is on offer."""
    for up in (upstream, tls_upstream):
        client = SmtpUpstream(upstream_config(up.port, tls="opportunistic"), "relay.test")
        result = await client.send("a@acme.example", "b@example.net", simple_message())
        await client.close()
        assert result.outcome == "delivered"
        assert len(up.messages) == 1


async def test_upstream_auth(tls_files):
    """The relay authenticates to the upstream; a refused AUTH is temporary, not a bounce."""
    seen = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        assert isinstance(auth_data, LoginPassword)
        seen.append(auth_data.login)
        ok = auth_data.password == b"upstream-secret"
        return AuthResult(success=ok, handled=False)

    up = TestUpstream()
    await up.start(tls_context=server_context(*tls_files), authenticator=authenticator)
    try:
        good = SmtpUpstream(
            upstream_config(
                up.port, tls="opportunistic", username="relay", password="upstream-secret"
            ),
            "relay.test",
        )
        assert (await good.send("a@acme.example", "b@example.net", simple_message())).outcome == (
            "delivered"
        )
        await good.close()
        bad = SmtpUpstream(
            upstream_config(up.port, tls="opportunistic", username="relay", password="wrong"),
            "relay.test",
        )
        result = await bad.send("a@acme.example", "b@example.net", simple_message())
        await bad.close()
        # A wrong upstream password must not bounce the mail: it is retried until fixed.
        assert result.outcome == "transient"
        assert result.code == 535
        assert seen[0] == b"relay"
    finally:
        await up.stop()


async def test_connection_is_reused_and_replaced_when_stale(upstream):
    """Sends share one connection; after the upstream restarts, a fresh one is opened."""
    client = SmtpUpstream(upstream_config(upstream.port, tls="none", connections=1), "relay.test")
    for n in range(3):
        assert (
            await client.send("a@acme.example", f"r{n}@example.net", simple_message())
        ).outcome == ("delivered")
    port = upstream.port
    await upstream.stop()
    await upstream.start(port)
    result = await client.send("a@acme.example", "late@example.net", simple_message())
    await client.close()
    assert result.outcome == "delivered"
    assert [m.rcpt for m in upstream.messages][-1] == "late@example.net"


async def test_a_path_the_client_refuses_fails_alone(upstream):
    """A recipient aiosmtplib will not put on the wire (a NUL) fails for good, alone.

    The next copies on the same single pooled connection are delivered: nothing is left in the
    middle of a transaction.
    """
    client = SmtpUpstream(upstream_config(upstream.port, connections=1), "relay.test")
    try:
        assert (
            await client.send("a@acme.example", "ok@example.net", simple_message())
        ).outcome == ("delivered")
        bad = await client.send("a@acme.example", "x\x00y@example.net", simple_message())
        assert bad.outcome == "permanent"
        assert bad.reply.startswith("553 5.1.3")
        for n in range(3):
            after = await client.send("a@acme.example", f"r{n}@example.net", simple_message())
            assert after.outcome == "delivered", after.reply
    finally:
        await client.close()
    assert [m.rcpt for m in upstream.messages] == [
        "ok@example.net",
        "r0@example.net",
        "r1@example.net",
        "r2@example.net",
    ]


_WIRE_PIECES = st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"a", b" ", b"\r\n.\r\n"])


@settings(max_examples=500, deadline=None)
@given(st.lists(_WIRE_PIECES, max_size=24).map(b"".join))
def test_data_preparation_gives_the_library_s_bytes(message):
    """The faster line-end and dot-stuffing steps give what aiosmtplib's own give, byte for byte."""
    import aiosmtplib.protocol

    from relay.delivery import upstream as module

    assert aiosmtplib.protocol.PERIOD_REGEX is module.PERIOD_AT_LINE_START  # in place
    assert module.LIBRARY_LINE_ENDINGS is not None
    assert module.LIBRARY_PERIOD is not None
    ours = aiosmtplib.protocol.normalize_message_line_endings(message)
    theirs = module.LIBRARY_LINE_ENDINGS(message)
    assert ours == theirs
    assert module.PERIOD_AT_LINE_START.sub(b"..", theirs) == module.LIBRARY_PERIOD.sub(
        b"..", theirs
    )


async def test_dots_and_bare_line_ends_reach_the_upstream_as_sent(upstream):
    """Lines starting with dots arrive unchanged; a bare CR or LF arrives as CRLF."""
    body = (
        b".first line starts with a dot\r\n..two dots\r\n.\r\nbare LF\nbare CR\rend\r\n"
        b"middle . and .. dots\r\n."
    )
    content = simple_message(body=body.decode())
    client = SmtpUpstream(upstream_config(upstream.port), "relay.test")
    try:
        result = await client.send("a@example.com", "b@example.net", content)
    finally:
        await client.close()
    assert result.outcome == "delivered"
    wanted = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    assert upstream.messages[0].content.rstrip(b"\r\n") == wanted.rstrip(b"\r\n")
