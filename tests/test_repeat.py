"""Repeated sends: one campaign to one person past the limit is refused; a sender looping halts."""

from __future__ import annotations

import aiosmtplib
import pytest
from conftest import (
    PASSWORD,
    config_data,
    eventually,
    read_events,
    simple_message,
    smtp_client,
)

from relay.cli.explain import render, story

LOGIN = ("acme-crm", PASSWORD)


NEWS = "This month we opened a new store downtown, with three whole floors of gadgets."
SALE = "Our autumn sale starts on Friday and runs through the whole weekend for members."


async def send(client, recipients, body=NEWS):
    """One message; the DATA reply code and text, and the recipients refused at RCPT."""
    try:
        refused, reply = await client.sendmail(
            "news@acme.example", recipients, simple_message(body=body)
        )
    except aiosmtplib.SMTPDataError as exc:
        return exc.code, exc.message
    except aiosmtplib.SMTPRecipientsRefused as exc:
        return 0, str(exc)
    assert refused == {}
    return 250, reply


async def test_fourth_copy_is_refused_other_campaigns_pass(
    start_relay, store_url, tls_files, upstream, log_lines
):
    """The same campaign 4 times to one person: the 4th refused naming the rule."""
    relay = await start_relay(
        config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    codes = [(await send(client, ["ann@example.net"]))[0] for _ in range(3)]
    assert codes == [250, 250, 250]
    code, text = await send(client, ["ann@example.net"])
    assert code == 550
    assert text == (
        "5.7.1 <ann@example.net> already got this message 3 times within a day;"
        " do not send it again"
    )
    assert (await send(client, ["ann@example.net"], body=SALE))[0] == 250
    # one of two recipients refused: the other is spooled, the CRM learns of the refused one
    code, reply = await send(client, ["ann@example.net", "bob@example.net"])
    assert code == 250
    queued = reply.rsplit(" ", 1)[1]
    told = render(await story(queued, relay.store))
    assert "refused <ann@example.net> by repeat.per_recipient: 550 5.7.1" in told
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 6)  # 5 copies and the DSN
    assert sorted(m.rcpt for m in upstream.messages).count("ann@example.net") == 4
    # The 4th copy refused whole, then ann refused alone: each an event, with its queue id.
    refused = await read_events(relay.store, 2, types=frozenset({"recipient.refused"}))
    assert [(e.recipient, e.data["stage"], e.data["rule"]) for e in refused] == [
        ("ann@example.net", "data", "repeat.per_recipient"),
        ("ann@example.net", "data", "repeat.per_recipient"),
    ]
    assert refused[0].message_id is not None
    assert refused[1].message_id == queued
    assert refused[1].data["reply"] == "550 " + text
    rejected = [e for e in log_lines() if e["event"] == "recipient_rejected"]
    assert [(e["rule"], e["stage"], e["recipient"]) for e in rejected] == [
        ("repeat.per_recipient", "data", "ann@example.net")
    ]
    totals = (await relay.store.stats(since=0, account_id="acme"))["acme"]
    assert totals["refused"] == 2  # what the events say
    # The sender's MTA said 250 for both: the relay reports ann's refusal as every MTA does.
    dsn = next(m for m in upstream.messages if m.rcpt == "news@acme.example")
    assert dsn.mail_from == "<>"
    report = dsn.message
    assert report.get_content_type() == "multipart/report"
    text_part, status, returned = report.get_payload()
    assert "<ann@example.net>: 550 5.7.1 <ann@example.net> already got" in text_part.get_payload()
    blocks = status.get_payload()
    assert blocks[0]["X-Optin-Relay-Queue-ID"] == queued
    assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks[1:]] == [
        ("rfc822; ann@example.net", "failed", "5.7.1")
    ]
    assert blocks[1]["Diagnostic-Code"] == "smtp; 550 " + text
    assert "Subject: Test" in returned.get_payload()  # the original's header
    assert "bob@example.net" not in status.as_string()


async def test_a_sender_looping_is_halted(start_relay, sqlite_url, tls_files, upstream):
    """200 recipients x 10 repeats: past 100 recipients refused for repeats, the account halts."""
    relay = await start_relay(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    everyone = [f"r{n}@example.net" for n in range(200)]
    replies = []
    for _ in range(10):
        for half in (everyone[:100], everyone[100:]):
            try:
                replies.append(await send(client, half))
            except aiosmtplib.SMTPSenderRefused as exc:
                replies.append((exc.code, exc.message))
    await client.quit()
    codes = [code for code, _ in replies]
    assert codes[:6] == [250] * 6  # three copies each
    assert codes[6] == 550  # all 100 refused: the message's reply
    assert replies[7] == (
        550,
        (
            "5.7.1 Repeated sends: 200 recipients got one campaign more than 3 times;"
            " the account is suspended"
        ),
    )
    assert set(codes[8:]) == {550}  # refused at MAIL from then on
    assert "Account suspended" in replies[8][1]
    state = await relay.store.account_state("acme")
    assert state.state == "suspended"
    assert state.reason == "repeat_loop: 200 > 100"


@pytest.mark.parametrize("mode", ["monitor"])
async def test_repeat_in_monitor_mode_passes_and_logs(
    start_relay, sqlite_url, tls_files, upstream, log_lines, mode
):
    """Monitor mode: the 4th copy goes out; the refusal is logged and journaled."""
    relay = await start_relay(
        config_data(
            store_url=sqlite_url,
            upstream_port=upstream.port,
            tls_files=tls_files,
            policies={"repeat": {"mode": mode}},
        )
    )
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    replies = [await send(client, ["ann@example.net"]) for _ in range(4)]
    await client.quit()
    assert [code for code, _ in replies] == [250] * 4
    (would,) = [e for e in log_lines() if e["event"] == "policy_would_refuse"]
    assert (would["rule"], would["fact_copy"]) == ("repeat.per_recipient", 4)
    queue_id = replies[3][1].rsplit(" ", 1)[1]
    [data] = [e for e in await relay.store.journal(queue_id) if e.kind == "data"]
    assert data.detail["would_refuse"]["ann@example.net"]["rule"] == "repeat.per_recipient"
