"""The DSN extension (RFC 3461): what a sender asks of delivery notices, honoured end to end.

Through the real server: NOTIFY and ORCPT on RCPT, RET and ENVID on MAIL are checked at the
door, kept with the message, and decide which reports the relay sends and what they carry.
"""

from __future__ import annotations

import asyncio
from email import message_from_bytes
from email.message import Message

import aiosmtplib
import pytest
import yaml
from clirun import run_cli
from conftest import (
    PASSWORD,
    TestUpstream,
    config_data,
    eventually,
    free_port,
    read_events,
    simple_message,
    smtp_client,
)

from relay.clock import SystemClock
from relay.mail import dsnrequest

LOGIN = ("acme-crm", PASSWORD)
SENDER = "news@acme.example"


def events(log_lines, name):
    return [e for e in log_lines() if e["event"] == name]


async def send(
    port: int, recipients: dict[str, list[str]], mail_options: list[str], message: bytes
) -> str:
    """One transaction with per-recipient options; the queue id."""
    client = await smtp_client(port, login=LOGIN)
    await client.mail(SENDER, options=mail_options)
    for address, options in recipients.items():
        await client.rcpt(address, options=options)
    response = await client.data(message)
    await client.quit()
    return response.message.rsplit(" ", 1)[1]


def blocks(report: Message) -> tuple[Message, dict[str, Message]]:
    """A DSN's per-message block, and its per-recipient blocks by final recipient."""
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    first, *rest = status.get_payload()
    return first, {b["Final-Recipient"].split(";", 1)[1].strip(): b for b in rest}


async def test_the_door_offers_dsn_and_checks_its_parameters(
    start_relay, sqlite_url, tls_files, upstream
):
    """EHLO offers DSN; what RFC 3461 does not allow gets 501, an unknown parameter 555.

    What is taken is kept as the client sent it (ENVID and ORCPT are case-sensitive).
    """
    relay = await start_relay(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    assert client.supports_extension("dsn")
    refused = {
        "MAIL FROM:<news@acme.example> RET=BODY": "501 5.5.4 Bad RET parameter syntax",
        "MAIL FROM:<news@acme.example> ENVID=" + "x" * 101: "501 5.5.4 Bad ENVID parameter syntax",
        "MAIL FROM:<news@acme.example> ENVID=a+0Ab": "501 5.5.4 Bad ENVID parameter syntax",
        "MAIL FROM:<news@acme.example> ENVID=a+C3b": "501 5.5.4 Bad ENVID parameter syntax",
        "MAIL FROM:<news@acme.example> RET=FULL RET=HDRS": "501 5.5.4 Error: multiple RET"
        " parameters",
    }
    for command, reply in refused.items():
        response = await client.execute_command(command.encode())
        assert f"{response.code} {response.message}" == reply, command
    response = await client.execute_command(b"MAIL FROM:<news@acme.example> ret=hdrs ENVID=Crm+2B7")
    assert response.code == 250
    for params, reply in {
        "NOTIFY=NEVER,SUCCESS": "501 5.5.4 Bad NOTIFY parameter syntax",
        "NOTIFY=FAILURE,FAILURE": "501 5.5.4 Bad NOTIFY parameter syntax",
        "NOTIFY=SOMETIMES": "501 5.5.4 Bad NOTIFY parameter syntax",
        "NOTIFY=": "501 5.5.4 Bad NOTIFY parameter syntax",
        "ORCPT=alice@example.net": "501 5.5.4 Bad ORCPT parameter syntax",
        "ORCPT=rfc822;a=b@example.net": "501 5.5.4 Bad ORCPT parameter syntax",
        "ORCPT=rfc822;" + "a" * 500: "501 5.5.4 Bad ORCPT parameter syntax",
        "NOTIFY=NEVER NOTIFY=NEVER": "501 5.5.4 Error: multiple NOTIFY parameters",
        "XFOO=1": "555 RCPT TO parameters not recognized or not implemented",
    }.items():
        response = await client.execute_command(f"RCPT TO:<bob@example.net> {params}".encode())
        assert f"{response.code} {response.message}" == reply, params
    for command in (
        b"RCPT TO:<Alice@example.net> notify=success,delay ORCPT=rfc822;Alice+2Bnews@example.net",
        b"RCPT TO:<bob@example.net>",
    ):
        assert (await client.execute_command(command)).code == 250
    response = await client.data(simple_message())
    await client.quit()
    queued = await relay.store.queued_message(response.message.rsplit(" ", 1)[1])
    assert queued is not None
    assert queued.dsn == "RET=HDRS ENVID=Crm+2B7"
    assert {r.recipient: r.dsn for r in queued.recipients} == {
        "Alice@example.net": "NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Alice+2Bnews@example.net",
        "bob@example.net": None,
    }
    request = dsnrequest.read(queued.recipients[0].dsn, queued.dsn)
    assert request == dsnrequest.DsnRequest(
        notify=frozenset({"SUCCESS", "DELAY"}),
        orcpt="rfc822;Alice+news@example.net",
        ret="HDRS",
        envid="Crm+7",
    )


async def test_each_connection_keeps_its_own_line_limits(
    start_relay, sqlite_url, tls_files, upstream
):
    """A RCPT line with the DSN parameters' allowance fits, whoever connects meanwhile.

    aiosmtpd's limits were one dict for all connections, emptied by each new one.
    """
    relay = await start_relay(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.mail(SENDER)
    _, writer = await asyncio.open_connection("127.0.0.1", relay.smtp_ports[0])  # no EHLO yet
    orcpt = "rfc822;" + "o" * 60 + "@" + "d" * 400 + ".example"
    command = f"RCPT TO:<alice@example.net> NOTIFY=SUCCESS,FAILURE ORCPT={orcpt}"
    assert len(command) > 512
    response = await client.execute_command(command.encode())
    assert response.code == 250, response.message
    writer.close()
    await client.quit()


async def test_a_helo_client_gets_no_dsn_parameters(start_relay, sqlite_url, tls_files, upstream):
    """Without EHLO there are no service extensions: a parameter is a syntax error."""
    relay = await start_relay(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.smtp_ports[0], start_tls=False, timeout=10
    )
    await client.connect()
    await client.helo()
    response = await client.execute_command(b"MAIL FROM:<a@example.net> RET=FULL")
    assert response.code == 501
    await client.quit()


async def test_notify_decides_which_reports_the_sender_gets(
    start_relay, store_url, tls_files, upstream: TestUpstream, log_lines
):
    """NEVER and SUCCESS alone: no failure report; FAILURE: one, with ORCPT, ENVID and RET=FULL.

    SUCCESS: a `relayed` report once the upstream took the copy. Every outcome is an event
    whatever the sender asked.
    """
    for address in ("bob", "carol", "dave"):
        upstream.reject[f"{address}@example.net"] = "550 5.1.1 No such user here"
    relay = await start_relay(
        config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    message = simple_message(body="The whole message comes back")
    queue_id = await send(
        relay.smtp_ports[0],
        {
            "alice@example.net": ["NOTIFY=SUCCESS,FAILURE"],
            "bob@example.net": ["NOTIFY=NEVER"],
            "carol@example.net": ["NOTIFY=SUCCESS"],
            "dave@example.net": ["NOTIFY=FAILURE", "ORCPT=rfc822;Dave+2Bx@example.net"],
        },
        ["RET=FULL", "ENVID=crm-42"],
        message,
    )
    await eventually(lambda: len(events(log_lines, "delivery_failed")) == 3)
    await eventually(lambda: len(events(log_lines, "delivery_succeeded")) == 3)
    queued = [e["reason"] for e in events(log_lines, "dsn_queued")]
    assert sorted(queued) == ["failed", "notify_success"]
    reports = [m for m in upstream.messages if m.rcpt == SENDER]
    assert len(reports) == 2
    assert {m.mail_from for m in reports} == {"<>"}
    by_action = {}
    for captured in reports:
        report = message_from_bytes(captured.content)
        per_message, per_recipient = blocks(report)
        assert per_message["Original-Envelope-Id"] == "crm-42"
        assert per_message["X-Optin-Relay-Queue-ID"] == queue_id
        ((recipient, block),) = per_recipient.items()
        by_action[block["Action"]] = (recipient, block, report)

    recipient, block, report = by_action["failed"]
    assert recipient == "dave@example.net"
    assert block["Original-Recipient"] == "rfc822;Dave+x@example.net"
    assert block["Status"] == "5.1.1"
    returned = report.get_payload()[-1]
    assert returned.get_content_type() == "message/rfc822"
    assert "The whole message comes back" in returned.get_payload()[0].get_payload()

    recipient, block, report = by_action["relayed"]
    assert recipient == "alice@example.net"
    assert block["Status"] == "2.0.0"
    assert "Original-Recipient" not in block
    assert block["Diagnostic-Code"] == "smtp; 250 2.0.0 Ok: captured"
    assert report["Subject"] == "Successful Mail Delivery Report"

    types = frozenset({"message.failed", "message.delivered"})
    feed = await read_events(relay.store, 4, types=types)
    outcomes = {(e.type, e.recipient) for e in feed if e.message_id == queue_id}
    assert outcomes == {
        ("message.delivered", "alice@example.net"),
        *(("message.failed", f"{who}@example.net") for who in ("bob", "carol", "dave")),
    }


async def test_a_non_ascii_orcpt_is_reported_in_its_7bit_form(
    start_relay, sqlite_url, tls_files, upstream: TestUpstream
):
    """RFC 6533's utf-8 address type: taken with SMTPUTF8, escaped to 7 bits in the DSN.

    Building that DSN raised UnicodeEncodeError (a header that must be 7-bit).
    """
    upstream.reject["dave@example.net"] = "550 5.1.1 No such user here"
    relay = await start_relay(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.mail(SENDER, options=["SMTPUTF8"])
    command = "RCPT TO:<dave@example.net> NOTIFY=FAILURE ORCPT=utf-8;J\u00f6rg@example.net"
    assert (await client.execute_command(command.encode())).code == 250  # UTF-8 on the wire
    await client.data(simple_message())
    await client.quit()
    await eventually(lambda: any(m.rcpt == SENDER for m in upstream.messages))
    report = next(m for m in upstream.messages if m.rcpt == SENDER)
    _, per_recipient = blocks(message_from_bytes(report.content))
    assert per_recipient["dave@example.net"]["Original-Recipient"] == (
        "utf-8; J\\x{F6}rg@example.net"
    )


async def test_queue_delete_reports_only_to_senders_who_asked(
    start_relay, sqlite_url, tls_files, tmp_path, log_lines
):
    """`queue delete --dsn` leaves out a recipient whose sender asked NOTIFY=NEVER."""
    data = config_data(store_url=sqlite_url, upstream_port=free_port(), tls_files=tls_files)
    relay = await start_relay(data, clock=SystemClock())
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(data))
    queue_id = await send(
        relay.smtp_ports[0],
        {"quiet@example.net": ["NOTIFY=NEVER"], "told@example.net": []},
        [],
        simple_message(),
    )
    await eventually(lambda: len(events(log_lines, "delivery_deferred")) == 2)
    done = await asyncio.to_thread(
        run_cli, "queue", "delete", "--dsn", queue_id, "--config", str(path)
    )
    assert done.stdout.strip() == "2 recipients deleted, 1 DSNs queued"


@pytest.mark.parametrize(
    ("params", "names", "stored"),
    [
        (["NOTIFY=failure,delay", "SIZE=10"], dsnrequest.RCPT_PARAMS, "NOTIFY=FAILURE,DELAY"),
        (["ORCPT=utf-8;J\u00f6rg@example.net"], dsnrequest.RCPT_PARAMS, None),
        (["ENVID=abc", "BODY=8BITMIME"], dsnrequest.MAIL_PARAMS, "ENVID=abc"),
    ],
)
def test_take_keeps_the_others_and_the_stored_form(params, names, stored):
    """The DSN parameters come out in their stored form; the others stay as they were."""
    found, others = dsnrequest.take(params, names)
    if stored is None:  # RFC 6533's utf-8 address type takes UTF-8 characters
        assert found == params[0]
        assert others == []
        return
    assert found == stored
    assert others == params[1:]
