"""Unsubscribe end to end: per-recipient tokens, one-click POST, page, mailto, suppression."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import re
from email import message_from_bytes

import aiohttp
import aiosmtplib
import pytest
from conftest import (
    PASSWORD,
    TOKEN_KEY,
    TestUpstream,
    config_data,
    eventually,
    simple_message,
    smtp_client,
)
from messages import TOKEN, token_of

from relay.storage.records import Suppression

ACME = ("acme-crm", PASSWORD)
GLOBEX = ("globex", PASSWORD)


@pytest.fixture
def data(store_url, upstream: TestUpstream, tls_files):
    return config_data(
        store_url=store_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        listeners=[
            {"address": "127.0.0.1:0", "tls": "starttls"},
            {"address": "127.0.0.1:0", "tls": "none", "auth": "optional"},
        ],
    )


async def send(relay, recipients, *, login=ACME, sender="news@acme.example", message=None):
    client = await smtp_client(relay.smtp_ports[0], login=login)
    await client.sendmail(sender, recipients, message or simple_message(sender=sender))
    await client.quit()


def tampered(token: str) -> str:
    """`token` with one character in the middle changed (never a padding bit)."""
    middle = len(token) // 2
    return token[:middle] + ("b" if token[middle] != "b" else "c") + token[middle + 1 :]


def mailto_local_part(content: bytes) -> str:
    """The local part of the copy's mailto unsubscribe address: short, lower-case base32."""
    match = TOKEN.search(content)
    assert match is not None, content[:600]
    return match.group(2).decode()


async def rcpt_reply(relay, recipient: str, *, login=ACME, sender="news@acme.example"):
    client = await smtp_client(relay.smtp_ports[0], login=login)
    await client.mail(sender)
    response = await client.execute_command(f"RCPT TO:<{recipient}>".encode())
    await client.quit()
    return response.code, response.message


def web(relay) -> str:
    return f"http://127.0.0.1:{relay.web_port}"


async def test_three_recipients_three_tokens(start_relay, data, upstream):
    """One transaction, three recipients: three copies, each token unsubscribes only its owner."""
    relay = await start_relay(data)
    recipients = ["alice@example.net", "bob@example.net", "carol@example.net"]
    await send(relay, recipients)
    await eventually(lambda: len(upstream.messages) == 3)
    tokens = {m.rcpt: token_of(m.content) for m in upstream.messages}
    assert len(set(tokens.values())) == 3
    for message in upstream.messages:
        assert message.content.count(b"List-Unsubscribe:") == 1
        assert message.content.count(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click") == 1
        body = message.message.get_payload(decode=True).decode()
        assert f"https://relay.test.example/u/{tokens[message.rcpt]}" in body
        assert "Acme News, 1 Acme Way, Springfield" in body

    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{web(relay)}/u/{tokens['bob@example.net']}",
            data="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            allow_redirects=False,
        )
        assert response.status == 200
    assert (await rcpt_reply(relay, "bob@example.net"))[0] == 550
    assert (await rcpt_reply(relay, "alice@example.net"))[0] == 250
    assert (await rcpt_reply(relay, "carol@example.net"))[0] == 250


async def test_one_click_post_both_encodings(start_relay, data, upstream, log_lines):
    """RFC 8058 body as urlencoded and as multipart/form-data both unsubscribe, with 200."""
    relay = await start_relay(data)
    await send(relay, ["u1@example.net", "u2@example.net", "u3@example.net", "u4@example.net"])
    await eventually(lambda: len(upstream.messages) == 4)
    tokens = {m.rcpt: token_of(m.content) for m in upstream.messages}
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("List-Unsubscribe", "One-Click")
        multipart = await http.post(f"{web(relay)}/u/{tokens['u1@example.net']}", data=form)
        urlencoded = await http.post(
            f"{web(relay)}/u/{tokens['u2@example.net']}",
            data=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        # RFC 8058 section 8.3's example: a multipart body whose boundary does not match.
        malformed = await http.post(
            f"{web(relay)}/u/{tokens['u3@example.net']}",
            data=b'--XYZ\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
            b"One-Click\r\n--XYZ--\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=ABC"},
        )
        # A charset Python does not know: the POST still unsubscribes.
        unknown_charset = await http.post(
            f"{web(relay)}/u/{tokens['u4@example.net']}",
            data=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=x-no-such"},
        )
        for response in (multipart, urlencoded, malformed, unknown_charset):
            assert response.status == 200
            assert "Location" not in response.headers
    for rcpt in tokens:
        assert (await rcpt_reply(relay, rcpt))[:2] == (550, rcpt_reply_text(rcpt))
    methods = [e["method"] for e in log_lines() if e["event"] == "unsubscribed"]
    assert methods == ["one_click"] * 4


def rcpt_reply_text(rcpt: str) -> str:
    return f"5.7.1 <{rcpt}> has unsubscribed from this sender; remove it from your list"


async def test_get_never_unsubscribes(start_relay, data, upstream):
    """GET shows the branded page with a button and changes nothing."""
    relay = await start_relay(data)
    await send(relay, ["alice@example.net"])
    await eventually(lambda: len(upstream.messages) == 1)
    token = token_of(upstream.messages[0].content)
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            response = await http.get(f"{web(relay)}/u/{token}")
            assert response.status == 200
            html = await response.text()
            assert "Unsubscribe from Acme News?" in html
            assert '<form method="post"' in html
            assert response.headers["Cache-Control"] == "no-store"
    assert await relay.store.suppressed("alice@example.net", "acme") is None
    assert (await rcpt_reply(relay, "alice@example.net"))[0] == 250


async def test_page_button_unsubscribes_and_is_idempotent(start_relay, data, upstream):
    """The page's own button works; doing it twice is fine."""
    relay = await start_relay(data)
    await send(relay, ["alice@example.net"])
    await eventually(lambda: len(upstream.messages) == 1)
    token = token_of(upstream.messages[0].content)
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            response = await http.post(
                f"{web(relay)}/u/{token}",
                data={"List-Unsubscribe": "One-Click", "source": "page"},
                allow_redirects=False,
            )
            assert response.status == 200
            assert "You are unsubscribed" in await response.text()
    found = await relay.store.suppressed("alice@example.net", "acme")
    assert (found.reason, found.source) == ("unsubscribe", "page")


def decodings(content: bytes) -> list[bytes]:
    """Every token-like run of a copy, decoded as base64url and as base32 where it decodes."""
    found = []
    for run in re.findall(rb"[A-Za-z0-9_-]{16,}", content):
        with contextlib.suppress(binascii.Error, ValueError):
            found.append(base64.urlsafe_b64decode(run + b"=" * (-len(run) % 4)))
        with contextlib.suppress(binascii.Error, ValueError):
            found.append(base64.b32decode(run.upper() + b"=" * (-len(run) % 8)))
    return found


async def test_no_token_in_a_delivered_copy_reveals_recipient_or_account(
    start_relay, data, upstream
):
    """Finding 5 of the hardening review: link scanners and access logs see opaque tokens.

    Every token-like string of the relayed copy (the one-click URL, the body links, the mailto
    address, the trace header, the bounce address), decoded, names neither the recipient nor the
    account.
    """
    relay = await start_relay(data)
    await send(relay, ["alice.secret@example.net"])
    await eventually(lambda: len(upstream.messages) == 1)
    copy = upstream.messages[0]
    assert token_of(copy.content)  # the copy has its tokens
    decoded = decodings(copy.content) + decodings(copy.mail_from.encode())
    assert decoded
    for secret in (b"alice.secret", b"acme-crm"):
        assert not [d for d in decoded if secret in d]


async def test_a_version_1_token_still_unsubscribes(start_relay, data, upstream, clock):
    """A link in mail rendered before tokens were sealed keeps working for its lifetime."""
    relay = await start_relay(data)
    day = int(clock.now() // 86400)
    payload = b"\x1f".join([b"1", b"acme-crm", b"old@example.net", b"tag", str(day).encode()])
    mac = hmac.new(TOKEN_KEY.encode(), payload, hashlib.sha256).digest()[:16]
    legacy = base64.urlsafe_b64encode(payload + mac).decode().rstrip("=")
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{web(relay)}/u/{legacy}", data=b"List-Unsubscribe=One-Click")
        assert response.status == 200
    assert await relay.store.suppressed("old@example.net", "acme-crm") is not None


async def test_forged_token_is_refused(start_relay, data, upstream):
    """A forged or altered token gets a 400 page and suppresses nothing."""
    relay = await start_relay(data)
    await send(relay, ["alice@example.net"])
    await eventually(lambda: len(upstream.messages) == 1)
    token = token_of(upstream.messages[0].content)
    altered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    async with aiohttp.ClientSession() as http:
        for bad in (altered, "forged", token + "x"):
            for call in (http.get, http.post):
                response = await call(f"{web(relay)}/u/{bad}", allow_redirects=False)
                assert response.status == 400
                assert "not valid" in await response.text()
    assert await relay.store.suppressed("alice@example.net", "acme") is None


async def test_mailto_through_smtp_listener(start_relay, data, upstream, log_lines):
    """Mail to unsub+TOKEN@inbound, without AUTH, suppresses; bad tokens and relaying do not.

    The address fits RFC 5321's 64-octet local part and survives case folding; the long token
    of mail rendered by earlier versions still works; a bounce token is no unsubscribe token.
    """
    relay = await start_relay(data)
    await send(relay, ["alice@example.net", "bert@example.net"])
    await eventually(lambda: len(upstream.messages) == 2)
    copies = {m.rcpt: m.content for m in upstream.messages}
    local = mailto_local_part(copies["alice@example.net"])
    assert len(local) <= 64
    trace = message_from_bytes(copies["alice@example.net"])["X-Optin-Trace"]
    port25 = relay.smtp_ports[1]
    client = await smtp_client(port25, starttls=False)
    await client.mail("alice@example.net")
    long_token = token_of(copies["alice@example.net"])
    for forged in (tampered(local), f"unsub+{trace}", f"unsub+{tampered(long_token)}"):
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as bad:
            await client.rcpt(f"{forged}@relay.test.example")
        assert bad.value.code == 550
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as relay_denied:
        await client.rcpt("someone@example.org")
    assert relay_denied.value.code == 554
    await client.rcpt(f"{local.upper()}@RELAY.TEST.EXAMPLE")  # a mail system folded the case
    # The self-contained token older versions put in the mailto address.
    await client.rcpt(f"unsub+{token_of(copies['bert@example.net'])}@relay.test.example")
    response = await client.data(b"Subject: unsubscribe\r\n\r\nplease\r\n")
    assert response.code == 250
    await client.quit()
    assert (await rcpt_reply(relay, "alice@example.net"))[0] == 550
    assert (await rcpt_reply(relay, "bert@example.net"))[0] == 550
    events = [e for e in log_lines() if e["event"] == "unsubscribed"]
    assert [(e["method"], e["recipient"], e["account_id"]) for e in events] == [
        ("mailto", "alice@example.net", "acme"),
        ("mailto", "bert@example.net", "acme"),
    ]
    assert events[0]["campaign"] == events[1]["campaign"]  # the same campaign either way
    assert len(upstream.messages) == 2  # nothing relayed for the inbound mail


async def test_unsubscribe_takes_effect_at_once_and_only_for_that_account(
    start_relay, data, upstream
):
    """The next RCPT from that account gets 550 5.7.1; another account may still mail."""
    relay = await start_relay(data)
    await send(relay, ["dana@example.net"])
    await eventually(lambda: len(upstream.messages) == 1)
    token = token_of(upstream.messages[0].content)
    async with aiohttp.ClientSession() as http:
        await http.post(f"{web(relay)}/u/{token}", data=b"List-Unsubscribe=One-Click")
    code, message = await rcpt_reply(relay, "dana@example.net")
    assert (code, message[:5]) == (550, "5.7.1")
    assert (await rcpt_reply(relay, "dana@example.net", login=GLOBEX, sender="x@globex.example"))[
        0
    ] == 250


async def test_global_scope_setting(start_relay, data, upstream):
    """With policies.unsubscribe.scope: global, an unsubscribe stops every account."""
    data["policies"] = {"unsubscribe": {"scope": "global"}}
    relay = await start_relay(data)
    await send(relay, ["erin@example.net"])
    await eventually(lambda: len(upstream.messages) == 1)
    async with aiohttp.ClientSession() as http:
        await http.post(f"{web(relay)}/u/{token_of(upstream.messages[0].content)}")
    assert (await rcpt_reply(relay, "erin@example.net", login=GLOBEX, sender="x@globex.example"))[
        0
    ] == 550


async def test_transactional_account_injection_after_broadcast_threshold(
    start_relay, data, upstream, log_lines
):
    """Transactional: no unsubscribe until one broadcast passes 100 recipients; then always."""
    relay = await start_relay(data)
    receipt = simple_message(sender="orders@globex.example", body="Your receipt for order")
    first = [f"c{n}@example.net" for n in range(60)]
    await send(relay, first, login=GLOBEX, sender="orders@globex.example", message=receipt)
    await eventually(lambda: len(upstream.messages) == 60)
    assert all(b"List-Unsubscribe" not in m.content for m in upstream.messages)

    second = [f"d{n}@example.net" for n in range(50)]  # same broadcast: 110 in 24 h
    await send(relay, second, login=GLOBEX, sender="orders@globex.example", message=receipt)
    await eventually(lambda: len(upstream.messages) == 110)
    later = [m for m in upstream.messages if m.rcpt.startswith("d")]
    assert all(m.content.count(b"List-Unsubscribe:") == 1 for m in later)
    assert any(e["event"] == "unsubscribe_made_mandatory" for e in log_lines())
    # From then on, every message of the account carries it (German brand page and footer).
    other = simple_message(sender="orders@globex.example", body="A different message entirely")
    await send(
        relay, ["z@example.net"], login=GLOBEX, sender="orders@globex.example", message=other
    )
    await eventually(lambda: len(upstream.messages) == 111)
    last = upstream.messages[-1]
    assert b"List-Unsubscribe:" in last.content
    assert "Globex, 2 Globex Road" in last.message.get_payload(decode=True).decode()
    async with aiohttp.ClientSession() as http:
        response = await http.get(f"{web(relay)}/u/{token_of(last.content)}")
        assert "Abmelden" in await response.text()


async def test_page_content_is_escaped(start_relay, data, upstream):
    """Brand names and addresses are HTML-escaped on the page."""
    data["accounts"][0]["brand"]["name"] = "<script>alert(1)</script> & Co"
    relay = await start_relay(data)
    await send(relay, ['"<b>x</b>"@example.net'])
    await eventually(lambda: len(upstream.messages) == 1)
    async with aiohttp.ClientSession() as http:
        html = await (
            await http.get(f"{web(relay)}/u/{token_of(upstream.messages[0].content)}")
        ).text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in html
    assert "<b>x</b>" not in html


async def test_store_down_answers_503_and_suppresses_nothing(start_relay, data, upstream):
    """When the store cannot record it, the page says so (503): never a false confirmation."""
    relay = await start_relay(data)
    await send(relay, ["alice@example.net"])
    await eventually(lambda: len(upstream.messages) == 1)
    token = token_of(upstream.messages[0].content)
    await relay.store.close()
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{web(relay)}/u/{token}")
        assert response.status == 503


async def test_suppressed_recipient_refused_with_reason(start_relay, data):
    """Each suppression reason has its own text and rule."""
    relay = await start_relay(data)
    for reason in ("complaint", "bounce", "manual"):
        await relay.store.suppress(
            Suppression(f"{reason}@example.net", "acme", reason, "test", 0), actor="test"
        )
        code, message = await rcpt_reply(relay, f"{reason}@example.net")
        assert (code, message[:5]) == (550, "5.7.1")
    assert (
        "reported this sender's mail as spam"
        in (await rcpt_reply(relay, "complaint@example.net"))[1]
    )


async def test_suppression_check_fails_closed(start_relay, data):
    """If the suppression list cannot be read, RCPT is deferred (451 4.3.0), never let through."""
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=ACME)
    await client.mail("news@acme.example")
    await relay.store.close()
    response = await client.execute_command(b"RCPT TO:<alice@example.net>")
    assert (response.code, response.message[:5]) == (451, "4.3.0")
    client.close()
