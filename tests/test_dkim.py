"""DKIM: vectors, relayed messages verify, tampering fails, missing keys follow the policy."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import aiosmtplib
import dkim
import pytest
from conftest import (
    PASSWORD,
    TestUpstream,
    config_data,
    dkim_dns,
    eventually,
    simple_message,
    smtp_client,
)
from dkim import canonicalization
from hypothesis import given, settings
from hypothesis import strategies as st
from messages import FIXTURE_FILES, FOOTER, HEADERS, crlf, own_messages

from relay.config import ConfigError, parse_config
from relay.mail import signing
from relay.mail.render import render
from relay.mail.signing import Signer, generate_key, load_keys, make_key, signed_headers

VECTORS = Path(__file__).parent / "fixtures" / "dkim-vectors"
RSA_PEM = generate_key("rsa-sha256")
ED_PEM = generate_key("ed25519-sha256")
LOGIN = ("acme-crm", PASSWORD)


def zone_dns(zone: Path):
    records = {}
    for line in zone.read_text().splitlines():
        name, _, value = line.partition(" ")
        records[f"{name}.".encode()] = value.strip().encode()

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return lookup


def keys_dns(keys):
    records = {f"{k.dns_name}.".encode(): k.public_record.encode() for k in keys}
    return lambda name, timeout=5: records.get(name)  # noqa: ARG005 - dkimpy's dnsfunc


def verify_all(message: bytes, dnsfunc) -> list[bool]:
    checker = dkim.DKIM(message)
    count = len(re.findall(rb"(?im)^DKIM-Signature:", message.split(b"\r\n\r\n")[0]))
    results = []
    for index in range(count):
        try:
            results.append(bool(checker.verify(idx=index, dnsfunc=dnsfunc)))
        except dkim.ValidationError:  # a body hash mismatch is reported by raising
            results.append(False)
    return results


def test_rfc8463_vectors_verify():
    """Both signatures of RFC 8463 Appendix A (Ed25519 and RSA) verify with dkimpy."""
    message = crlf((VECTORS / "rfc8463-appA.signed.eml").read_bytes())
    assert verify_all(message, zone_dns(VECTORS / "rfc8463.zone")) == [True, True]


def test_rfc8463_keys_load_and_sign():
    """The RFC's own private keys load (Ed25519 as a base64 seed) and produce valid signatures."""
    ed = make_key(
        "football.example.com",
        "brisbane",
        "ed25519-sha256",
        (VECTORS / "rfc8463-brisbane-ed25519.key").read_bytes(),
    )
    assert ed.public_record.endswith("p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    message = b"From: Joe <joe@football.example.com>\r\nSubject: hi\r\n\r\nHi.\r\n"
    signed = Signer([ed]).sign(message, "football.example.com")
    assert verify_all(signed, zone_dns(VECTORS / "rfc8463.zone")) == [True]


def test_signature_tags_and_headers():
    """relaxed/relaxed, t= set, no l=, h= with the required headers, oversigned as required."""
    key = make_key("acme.example", "s1", "rsa-sha256", RSA_PEM)
    message = crlf(
        b"From: a@acme.example\nTo: b@example.net\nCc: c@example.net\nSubject: s\n"
        b"Date: Mon, 1 Jan 2029 00:00:00 +0000\nMessage-ID: <1@acme.example>\n"
        b"Reply-To: r@acme.example\nMIME-Version: 1.0\nContent-Type: text/plain\n"
        b"List-Unsubscribe: <https://x.example/u/1>\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
        b"Received: from x\n\nbody\n"
    )
    signed = Signer([key]).sign(message, "acme.example")
    field = signed.split(b"\r\n\r\n")[0].split(b"\r\nFrom:")[0].replace(b"\r\n ", b" ")
    tags = dict(t.strip().split(b"=", 1) for t in field.split(b":", 1)[1].split(b";"))
    assert tags[b"c"] == b"relaxed/relaxed"
    assert tags[b"a"] == b"rsa-sha256"
    assert b"l" not in tags
    assert tags[b"t"].isdigit()
    h = [n.strip() for n in tags[b"h"].split(b":")]
    for required in (
        b"from",
        b"reply-to",
        b"subject",
        b"date",
        b"to",
        b"cc",
        b"message-id",
        b"mime-version",
        b"content-type",
        b"list-unsubscribe",
        b"list-unsubscribe-post",
    ):
        assert required in h
    for oversigned in (
        b"from",
        b"subject",
        b"date",
        b"to",
        b"list-unsubscribe",
        b"list-unsubscribe-post",
    ):
        assert h.count(oversigned) == 2
    assert b"received" not in h
    assert b"return-path" not in h


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m.replace(b"Subject: Test", b"Subject: Test!"),
        lambda m: m.replace(b"\r\n\r\n", b"\r\nFrom: evil@attacker.example\r\n\r\n", 1),
        lambda m: m.replace(b"\r\n\r\n", b"\r\nSubject: second\r\n\r\n", 1),
        lambda m: m.replace(
            b"\r\n\r\n", b"\r\nList-Unsubscribe: <https://evil.example/>\r\n\r\n", 1
        ),
        lambda m: m.replace(b"Hello", b"Hellp"),
    ],
    ids=["changed-subject", "second-from", "second-subject", "added-list-unsubscribe", "body"],
)
def test_tampering_breaks_every_signature(tamper):
    """Changing a signed header, or adding From, Subject or List-Unsubscribe, fails verification."""
    keys = [
        make_key("acme.example", "r1", "rsa-sha256", RSA_PEM),
        make_key("acme.example", "e1", "ed25519-sha256", ED_PEM),
    ]
    rendered = render(simple_message(), HEADERS, FOOTER).content
    signed = Signer(keys).sign(rendered, "acme.example")
    assert verify_all(signed, keys_dns(keys)) == [True, True]
    assert verify_all(tamper(signed), keys_dns(keys)) == [False, False]


def rendered_set() -> list[tuple[str, bytes]]:
    items = [(path.name, crlf(path.read_bytes())) for path in FIXTURE_FILES]
    return items + sorted(own_messages().items())


@pytest.mark.parametrize(
    ("name", "original"), rendered_set(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_every_rendered_fixture_verifies(name, original):
    """Each message of the unsubscribe fixture set, rendered then signed, verifies (both keys)."""
    rendered = render(original, HEADERS, FOOTER).content
    from_line = re.search(rb"(?im)^from:.*?@([\w.-]+)", rendered)
    domain = from_line.group(1).decode().lower() if from_line else "acme.example"
    keys = [
        make_key(domain, "r1", "rsa-sha256", RSA_PEM),
        make_key(domain, "e1", "ed25519-sha256", ED_PEM),
    ]
    signed = Signer(keys).sign(rendered, domain)
    assert verify_all(signed, keys_dns(keys)) == [True, True]


def test_signed_headers_count_occurrences():
    """A header present twice is listed twice (and once more when oversigned)."""
    message = b"From: a@x.example\r\nReceived: x\r\nTo: a@y\r\nTo: b@y\r\n\r\n"
    names = signed_headers(message)
    assert names.count(b"to") == 3
    assert names.count(b"from") == 2
    assert b"cc" not in names


async def test_relayed_messages_verify(start_relay, store_url, upstream: TestUpstream, tls_files):
    """Messages leave the relay with an Ed25519 and an RSA signature, both valid."""
    data = config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.sendmail("news@acme.example", ["a@example.net", "b@example.net"], simple_message())
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 2)
    for message in upstream.messages:
        assert verify_all(message.content, dkim_dns(relay.config)) == [True, True]
        assert b"d=acme.example" in message.content
        assert b"a=ed25519-sha256" in message.content
        assert b"a=rsa-sha256" in message.content


async def test_dsn_is_signed_by_the_relay(start_relay, sqlite_url, upstream, tls_files):
    """The relay's own DSNs carry a signature of its own domain."""
    upstream.reject["bob@example.net"] = "550 5.1.1 No such user"
    relay = await start_relay(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.sendmail("news@acme.example", ["bob@example.net"], simple_message())
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)
    dsn = upstream.messages[0].content
    assert b"d=relay.test.example" in dsn
    assert verify_all(dsn, dkim_dns(relay.config)) == [True]


@pytest.mark.parametrize(
    ("setting", "event", "delivered"),
    [
        (None, "delivery_deferred", False),
        ("reject", "delivery_failed", False),
        ("relay_unsigned", "delivery_succeeded", True),
    ],
)
async def test_missing_key_policy(
    start_relay, sqlite_url, upstream, tls_files, log_lines, setting, event, delivered
):
    """No key for the From domain: deferred by default; refused or relayed unsigned if so set."""
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    data["dkim"] = [k for k in data["dkim"] if k["domain"] != "acme.example"]
    if setting:
        data["policies"] = {"dkim": {"missing_key": setting}}
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.sendmail("news@acme.example", ["a@example.net"], simple_message())
    await client.quit()
    await eventually(lambda: any(e["event"] == event for e in log_lines()))
    mail = [m for m in upstream.messages if m.rcpt == "a@example.net"]
    assert bool(mail) == delivered
    if delivered:
        assert b"DKIM-Signature" not in mail[0].content
    else:
        entry = next(e for e in log_lines() if e["event"] == event)
        assert entry["rule"] == "dkim.missing_key"
        assert "No DKIM key for the From domain acme.example" in entry["upstream_reply"]


@pytest.mark.parametrize("keep", [False, True])
async def test_senders_broken_signature_removed_unless_kept(
    start_relay, sqlite_url, upstream, tls_files, log_lines, keep
):
    """A sender's signature that the rewriting broke is removed (logged), or kept when asked."""
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    if keep:
        data["policies"] = {"dkim": {"keep_broken_signatures": True}}
    relay = await start_relay(data)
    crm_signed = (
        b"DKIM-Signature: v=1; a=rsa-sha256; d=crm.example; s=x;\r\n h=from; bh=AAAA; b=BBBB\r\n"
        + simple_message()
    )
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.sendmail("news@acme.example", ["a@example.net"], crm_signed)
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)
    content = upstream.messages[0].content
    assert (b"d=crm.example" in content) == keep
    assert any(e["event"] == "dkim_signature_removed" for e in log_lines()) != keep
    assert verify_all(content, dkim_dns(relay.config))[:2] == [True, True]


def test_key_errors_name_their_location(tmp_path, sqlite_url, tls_files):
    """Unreadable, too short or wrong-type keys are config errors at dkim[i].private_key."""
    short = Path(__file__).parent / "fixtures" / "rsa-768-test-only.pem"
    (tmp_path / "short.pem").write_bytes(short.read_bytes())
    (tmp_path / "ed.pem").write_bytes(ED_PEM)
    data = config_data(store_url=sqlite_url, upstream_port=25, tls_files=tls_files)
    data["dkim"] = [
        {"domain": "acme.example", "selector": "a", "private_key": str(tmp_path / "missing.pem")},
        {"domain": "acme.example", "selector": "b", "private_key": str(tmp_path / "short.pem")},
        {
            "domain": "acme.example",
            "selector": "c",
            "private_key": str(tmp_path / "ed.pem"),
            "algorithm": "rsa-sha256",
        },
    ]
    with pytest.raises(ConfigError) as error:
        load_keys(parse_config(data).dkim)
    problems = error.value.problems
    assert problems[0].startswith("dkim[0].private_key: cannot read")
    assert problems[1] == "dkim[1].private_key: RSA keys need at least 1024 bits, this one has 768"
    assert problems[2] == "dkim[2].private_key: the key is not a rsa-sha256 key"


def test_short_rsa_key_warns(tmp_path, sqlite_url, tls_files):
    """A 1024-bit key loads with a warning; from_domains without a key are warned about."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - on purpose
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    data = config_data(store_url=sqlite_url, upstream_port=25, tls_files=tls_files)
    data["dkim"] = [
        {"domain": "acme.example", "selector": "old", "private_key": str(tmp_path / "k.pem")}
    ]
    from relay.app import check_runtime

    warnings = check_runtime(parse_config(data))
    assert "dkim[0].private_key: a 1024-bit RSA key; use 2048 bits or more" in warnings
    assert any("no DKIM key for globex.example" in w for w in warnings)


async def test_8bit_converted_for_an_upstream_without_8bitmime(
    start_relay, sqlite_url, tls_files, log_lines
):
    """Without 8BITMIME upstream, 8-bit bodies are re-encoded before signing; the copy verifies."""
    seven_bit_only = TestUpstream()
    await seven_bit_only.start(decode_data=True)  # aiosmtpd then does not offer 8BITMIME
    try:
        data = config_data(
            store_url=sqlite_url, upstream_port=seven_bit_only.port, tls_files=tls_files
        )
        relay = await start_relay(data)
        text = "Gr\u00fc\u00dfe aus K\u00f6ln\r\n"
        message = (
            b"From: orders@globex.example\r\nTo: a@example.net\r\nSubject: receipt\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text.encode()
        )
        client = await smtp_client(relay.smtp_ports[0], login=("globex", PASSWORD))
        await client.sendmail(
            "orders@globex.example", ["a@example.net"], message, mail_options=["BODY=8BITMIME"]
        )
        await client.quit()
        await eventually(lambda: len(seven_bit_only.messages) == 1)
        received = seven_bit_only.messages[0]
        assert received.content.isascii()
        assert received.message["Content-Transfer-Encoding"] == "quoted-printable"
        assert received.message.get_payload(decode=True).decode() == text
        assert verify_all(received.content, dkim_dns(relay.config)) == [True]
    finally:
        await seven_bit_only.stop()


def test_seven_bit_wire_form_leaves_clean_messages_alone():
    """ASCII-only and already-encoded messages come back unchanged; binary parts become base64."""
    from relay.mail.wire import wire_form

    clean = simple_message()
    assert wire_form(clean, seven_bit=True) == clean
    binary = (
        b"From: a@acme.example\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n\xff\xfe\x00\x01\r\n"
    )
    converted = wire_form(binary, seven_bit=True)
    assert converted.isascii()
    assert b"Content-Transfer-Encoding: base64" in converted


def test_from_domain_reads_folded_and_quoted_from_fields():
    """A folded From with an escaped quote in its display name still names its domain."""
    from relay.mail.headers import from_domain

    folded = b'From: "Acme \\"Weekly\\" <news>"\r\n <news@Acme.Example>\r\nTo: a@b.example\r\n\r\nx'
    assert from_domain(folded) == "acme.example"
    assert from_domain(b"To: a@b.example\r\n\r\nx") is None


_BODY = st.lists(
    st.sampled_from([b"a", b"word", b" ", b"  ", b"\t", b"\r\n", b"\r\n\r\n", b".", b"\xc3\xa9"]),
    max_size=40,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(_BODY)
def test_relaxed_body_canonicalisation_is_dkimpys(body):
    """The faster relaxed body canonicalisation gives dkimpy's own bytes for any body."""
    assert signing._Relaxed.canonicalize_body(body) == (
        canonicalization.Relaxed.canonicalize_body(body)
    )


@pytest.mark.parametrize(
    "message",
    [
        b"From: a@acme.example\r\nSubject: x\r\n folded\r\n\r\nbody\r\n\r\n",
        b"From: a@acme.example\r\n\r\n",
        b"From: a@acme.example\r\nSubject: no body\r\n",
        b"From: a@acme.example\nSubject: bare LF\n\nbody\n",
        b"From: a@acme.example\r\n\r\nmixed\nline ends\r\n",
    ],
)
def test_header_split_is_dkimpys(message):
    """The signer's split of header fields and body is dkimpy's, whatever the line ends."""
    ours, stock = signing._FastDKIM(message, None), dkim.DKIM(message)
    assert (ours.headers, ours.body) == (stock.headers, stock.body)


_STOCK_VERIFIER = """
import json, sys
import dkim
data = json.load(sys.stdin)
records = {name.encode(): value.encode() for name, value in data["dns"].items()}
results = []
for text in data["messages"]:
    message = text.encode("latin-1")
    checker = dkim.DKIM(message)
    count = message.split(b"\\r\\n\\r\\n")[0].lower().count(b"\\ndkim-signature:") + (
        message.lower().startswith(b"dkim-signature:"))
    results.append([bool(checker.verify(idx=i, dnsfunc=lambda n, timeout=5: records.get(n)))
                    for i in range(count)])
print(json.dumps(results))
"""


def test_signatures_verify_with_stock_dkimpy_in_another_process():
    """Signed copies verify in a fresh interpreter that never loads the relay's signer.

    The relay swaps in its own relaxed canonicalisation (the same bytes, faster); an
    independent check must not use it.
    """
    keys = [
        make_key("acme.example", "r1", "rsa-sha256", RSA_PEM),
        make_key("acme.example", "e1", "ed25519-sha256", ED_PEM),
    ]
    signer = Signer(keys)
    bodies = [
        b"Hello reader,\r\nplain text, single spaces.\r\n\r\n\r\n",
        b"Tabs\there and  double spaces  \r\ntrailing \r\n",
        b"",
    ]
    messages = [
        signer.sign(
            b"From: News <news@acme.example>\r\nTo: r@example.net\r\nSubject: Test\r\n"
            b"MIME-Version: 1.0\r\n\r\n" + body,
            "acme.example",
        )
        for body in bodies
    ]
    messages += [
        signer.sign(render(original, HEADERS, FOOTER).content, "acme.example")
        for _, original in sorted(own_messages().items())
        if b"acme.example" in original.split(b"\r\n\r\n")[0]
    ][:5]
    dns = {f"{k.dns_name}.": k.public_record for k in keys}
    payload = json.dumps({"dns": dns, "messages": [m.decode("latin-1") for m in messages]})
    result = subprocess.run(
        [sys.executable, "-c", _STOCK_VERIFIER],
        input=payload,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == [[True, True]] * len(messages)


def long_lines_message(sender: str = "news@acme.example") -> tuple[bytes, dict[str, bytes]]:
    """A multipart message with 5,000-octet lines in headers, text, HTML and a base64 attachment."""
    words = " ".join(f"word{n:04d}" for n in range(550))  # 5,499 octets with spaces
    token = "t" * 5000  # no whitespace at all
    text = "Dear reader, " + "all on one line. " * 300  # 5,113 octets
    html = "<html><body><p>" + "<b>one</b> line " * 320 + "</p></body></html>"
    attachment = bytes(range(256)) * 15  # 3,840 octets, one base64 line of 5,120
    parts = {
        "subject": words.encode(),
        "token": token.encode(),
        "text": text.encode(),
        "html": html.encode(),
        "attachment": attachment,
    }
    message = (
        f"From: {sender}\r\nTo: reader@example.net\r\nSubject: {words}\r\n"
        f"X-Long-Token: {token}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        '--outer\r\nContent-Type: multipart/alternative; boundary="inner"\r\n\r\n'
        f"--inner\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{text}\r\n"
        f"--inner\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n{html}\r\n"
        "--inner--\r\n"
        "--outer\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="data.bin"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
        f"{base64.b64encode(attachment).decode()}\r\n"
        "--outer--\r\n"
    ).encode()
    return message, parts


async def test_long_lines_are_accepted_and_relayed_in_lines_of_998(
    start_relay, store_url, upstream: TestUpstream, tls_files
):
    """Finding 6 of the hardening review: 5,000-octet header and body lines, as real mail has.

    Accepted (they got `500 Line too long` before), relayed with every line at most 998 octets,
    every part's content unchanged, and both DKIM signatures verify.
    """
    data = config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    relay = await start_relay(data)
    message, original = long_lines_message()
    assert max(len(line) for line in message.split(b"\r\n")) > 5000
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.sendmail("news@acme.example", ["reader@example.net"], message)
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)
    copy = upstream.messages[0]
    assert max(len(line) for line in copy.content.split(b"\r\n")) <= 998
    assert b"\n" not in copy.content.replace(b"\r\n", b"")
    assert verify_all(copy.content, dkim_dns(relay.config)) == [True, True]
    parsed = copy.message
    assert re.sub(r"\r\n", "", str(parsed["Subject"])) == original["subject"].decode()
    assert str(parsed["X-Long-Token"]).replace("\r\n ", "") == original["token"].decode()
    leaves = [part for part in parsed.walk() if not part.is_multipart()]
    text, html, attachment = (part.get_payload(decode=True) for part in leaves)
    assert text.startswith(original["text"])  # the footer follows
    assert original["html"].split(b"</p>")[0] in html
    assert attachment == original["attachment"]


async def test_a_line_over_the_configured_limit_is_refused(
    start_relay, sqlite_url, upstream: TestUpstream, tls_files
):
    """`smtp.max_line_length` bounds a line; longer gets 500 and the session goes on."""
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    relay = await start_relay({**data, "smtp": {**data["smtp"], "max_line_length": 2000}})
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    too_long = simple_message() + b"x" * 2001 + b"\r\n"
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await client.sendmail("news@acme.example", ["a@example.net"], too_long)
    assert (refused.value.code, refused.value.message[:19]) == (500, "5.5.2 Line too long")
    fits = simple_message() + b"x" * 2000 + b"\r\n"
    await client.sendmail("news@acme.example", ["a@example.net"], fits)
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)
    assert max(len(line) for line in upstream.messages[0].content.split(b"\r\n")) <= 998
