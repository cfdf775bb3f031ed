"""`optin-relay explain`: every decision about a message, from the store, after a restart."""

from __future__ import annotations

import asyncio
import json
import re

import yaml
from clirun import run_cli
from conftest import TestUpstream, config_data, eventually, simple_message, smtp_client
from reports import ACME, INBOUND, arf, inbound, listeners

from relay.storage.records import Suppression


async def test_explain_tells_the_whole_story_after_a_restart(
    start_relay, store_url, tls_files, upstream: TestUpstream, tmp_path, clock
):
    """3 recipients: one suppressed, one delivered, one that later complained; all of it, in order.

    The relay is stopped and started again, and no log is read: the story is in the store.
    """
    data = config_data(
        store_url=store_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        listeners=listeners(),
    )
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    relay = await start_relay(data)
    await relay.store.suppress(
        Suppression("gone@example.net", "acme", "unsubscribe", "test", clock.now() - 7 * 86400),
        actor="test",
    )
    client = await smtp_client(relay.smtp_ports[0], login=ACME)
    refused, reply = await client.sendmail(
        "news@acme.example",
        ["gone@example.net", "kept@example.net", "angry@example.net"],
        simple_message(),
    )
    await client.quit()
    queue_id = reply.rsplit(" ", 1)[1]
    assert list(refused) == ["gone@example.net"]
    await eventually(lambda: len(upstream.messages) == 2)
    angry = next(m for m in upstream.messages if m.rcpt == "angry@example.net")
    clock.advance(3600)
    code, _ = await inbound(relay, f"fbl@{INBOUND}", arf(angry.content))
    assert code == 250
    await relay.stop()
    relay = await start_relay(data)  # restarted; nothing below reads a log

    def explain(*args: str, check: bool = True):
        return run_cli("explain", *args, "--config", str(path), check=check)

    shown = await asyncio.to_thread(explain, queue_id)
    lines = shown.stdout.splitlines()
    assert lines[0] == f"message {queue_id}  account acme  sender <news@acme.example>"
    expected = [
        (
            r"MAIL FROM <news@acme\.example> from 127\.0\.0\.1 \(HELO .*\) on 127\.0\.0\.1:0,"
            r" TLS, AUTH acme-crm: accepted"
        ),
        (
            r"policies asked in order \(mail: account_state, terms, from_domain, rate_limit; rcpt:"
            r" suppression, consent, rate_limit; data: from_domain, repeat,"
            r" broadcast, unsubscribe\)"
        ),
        (
            r"RCPT TO #1 <gone@example\.net> refused by suppression\.unsubscribe \(scope=acme,"
            r" suppressed_at=.*\): 550 5\.7\.1 <gone@example\.net> has unsubscribed"
        ),
        r"RCPT TO #2 <kept@example\.net> accepted",
        r"RCPT TO #3 <angry@example\.net> accepted",
        r"DATA \d+ bytes, 2 recipients, campaign \S+: accepted",
        r"message\.accepted ",
        (
            r"copy for <(kept|angry)@example\.net> attempt 1 \(delivered\); unsubscribe token"
            r" [0-9a-f]{16}, footer in 1 text part; trace token [0-9a-f]{16},"
            r" envelope <bounce\+\S+>;"
            r" DKIM signed d=acme\.example, 0 broken signatures removed"
        ),
        r"message\.delivered <(kept|angry)@example\.net> attempt=1, reply=250",
        r"copy for <(kept|angry)@example\.net> attempt 1 \(delivered\)",
        r"message\.delivered <(kept|angry)@example\.net> attempt=1, reply=250",
        r"case\.opened <angry@example\.net> ",
        r"recipient\.complained <angry@example\.net> ",
    ]
    story = lines[2:]
    assert len(story) == len(expected), "\n".join(story)
    for line, pattern in zip(story, expected, strict=True):
        assert re.search(pattern, line), f"{pattern!r} does not match {line!r}"

    # every marker the copy carries names the same message
    copy = angry.message
    unsubscribe = str(copy["List-Unsubscribe"])
    link = re.search(r"<(https://[^>]+)>", unsubscribe)
    mailto = re.search(r"<mailto:([^>?]+)", unsubscribe)
    assert link
    assert mailto
    for marker in (str(copy["X-Optin-Trace"]), angry.mail_from, link.group(1), mailto.group(1)):
        named = await asyncio.to_thread(explain, marker, "--json")
        assert json.loads(named.stdout)["message"]["queue_id"] == queue_id, marker

    by_recipient = await asyncio.to_thread(
        explain, "--recipient", "gone@example.net", "--since", "2000-01-01T00:00:00Z", "--json"
    )
    found = json.loads(by_recipient.stdout)
    assert found["message"]["queue_id"] == queue_id
    refusal = next(
        item for item in found["timeline"] if item.get("recipient") == "gone@example.net"
    )
    assert (refusal["verdict"], refusal["rule"], refusal["policy"]) == (
        "reject",
        "suppression.unsubscribe",
        "suppression",
    )
    unknown = await asyncio.to_thread(explain, "no-such-thing", check=False)
    assert unknown.returncode == 1
    assert "nothing known about no-such-thing" in unknown.stderr


async def test_explain_names_the_dsn_of_a_failed_copy(
    start_relay, sqlite_url, tls_files, upstream: TestUpstream, tmp_path
):
    """A copy refused for good: its attempt, the upstream's reply and the DSN sent."""
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    upstream.reject["nobody@example.net"] = "550 5.1.1 No such user"
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=ACME)
    _, reply = await client.sendmail("news@acme.example", ["nobody@example.net"], simple_message())
    await client.quit()
    queue_id = reply.rsplit(" ", 1)[1]
    await eventually(lambda: any(m.rcpt == "news@acme.example" for m in upstream.messages))
    shown = await asyncio.to_thread(run_cli, "explain", queue_id, "--config", str(path))
    copy = next(line for line in shown.stdout.splitlines() if "copy for <nobody" in line)
    dsn_id = re.search(r"DSN to the sender queued as (\S+)", copy)
    assert dsn_id, copy
    assert "attempt 1 (failed)" in copy
    dsn = await relay.store.queued_message(dsn_id.group(1))
    assert dsn is not None
    assert (dsn.kind, dsn.mail_from) == ("dsn", "")
    assert [r.recipient for r in dsn.recipients] == ["news@acme.example"]
    assert "message.failed <nobody@example.net> attempt=1, reply=550 5.1.1 No such user" in (
        shown.stdout
    )
