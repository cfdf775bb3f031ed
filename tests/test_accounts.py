"""Account lifecycle: suspend holds mail and refuses MAIL, reinstate releases, terminate purges."""

from __future__ import annotations

import asyncio

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
    simple_message,
    smtp_client,
)

from relay.accounts.standing import change_state
from relay.storage.records import PURGED_REPLY

LOGIN = ("acme-crm", PASSWORD)


async def queue_one(relay) -> None:
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.sendmail("news@acme.example", ["alice@example.net"], simple_message())
    await client.quit()


async def test_suspend_holds_and_reinstate_releases(
    start_relay, store_url, tls_files, clock, log_lines
):
    """Suspended: MAIL gets 550 5.7.1 naming the abuse desk, mail is held; reinstated: it flows."""
    port = free_port()
    relay = await start_relay(
        config_data(store_url=store_url, upstream_port=port, tls_files=tls_files)
    )
    await queue_one(relay)
    await eventually(lambda: any(e["event"] == "delivery_deferred" for e in log_lines()))

    assert (
        await change_state(
            relay.store,
            "acme",
            "suspended",
            reason="broadcast_halted",
            actor="test",
            now=clock.now(),
        )
        == 1
    )
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await client.mail("news@acme.example")
    assert (refused.value.code, refused.value.message) == (
        550,
        "5.7.1 Account suspended; contact abuse@relay.test.example",
    )
    await client.quit()

    upstream = TestUpstream()
    await upstream.start(port)
    try:
        clock.advance(3600)
        relay.delivery.wake()
        await asyncio.sleep(0.5)
        assert upstream.messages == []  # held
        assert (
            await change_state(
                relay.store,
                "acme",
                "active",
                reason="appeal accepted",
                actor="test",
                now=clock.now(),
            )
            == 1
        )
        relay.delivery.wake()
        await eventually(lambda: len(upstream.messages) == 1)
        client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
        await client.mail("news@acme.example")  # accepted again
        await client.quit()
    finally:
        await upstream.stop()
    events = [e["event"] for e in log_lines() if e["event"].startswith("account_")]
    assert events == [
        "account_suspended",
        "account_mail_held",
        "account_reinstated",
        "account_mail_released",
    ]


async def test_terminate_purges_without_dsn(start_relay, store_url, tls_files, clock):
    """Termination fails the account's queued recipients, sends no DSN, and is on the record."""
    relay = await start_relay(
        config_data(store_url=store_url, upstream_port=free_port(), tls_files=tls_files)
    )
    await queue_one(relay)
    purged = await change_state(
        relay.store,
        "acme",
        "terminated",
        reason="repeat offender",
        actor="abuse-desk",
        now=clock.now(),
    )
    assert purged == 1
    assert await relay.store.counts() == {"failed": 1}
    assert await relay.store.queue() == []
    history = await relay.store.account_history("acme")
    assert [(h.state, h.reason, h.actor) for h in history] == [
        ("terminated", "repeat offender", "abuse-desk")
    ]
    assert (await relay.store.account_state("acme")).state == "terminated"


def test_accounts_cli(tmp_path, sqlite_url, tls_files):
    """list, show, suspend, reinstate, terminate through the command line, with audit trail."""
    path = tmp_path / "relay.yaml"
    path.write_text(
        yaml.safe_dump(config_data(store_url=sqlite_url, upstream_port=25, tls_files=tls_files))
    )

    def cli(*args, check=True):
        return run_cli("accounts", *args, "--config", str(path), check=check)

    assert cli("list").stdout.splitlines() == [
        "acme\tacme-crm\tmarketing\tactive",
        "globex\tglobex\ttransactional\tactive",
    ]
    assert cli("suspend", "acme", check=False).returncode == 2  # --reason is required
    assert cli("suspend", "nobody", "--reason", "x", check=False).returncode == 1
    assert (
        "acme\tsuspended\t0 queued recipients held"
        in cli("suspend", "acme", "--reason", "complaints").stdout
    )
    assert "acme\tactive" in cli("reinstate", "acme", "--reason", "proof shown").stdout
    cli("terminate", "acme", "--reason", "third strike")
    assert cli("reinstate", "acme", "--reason", "please", check=False).returncode == 1
    assert cli("list").stdout.splitlines() == [
        "acme\tacme-crm\tmarketing\tterminated",
        "globex\tglobex\ttransactional\tactive",
    ]
    shown = cli("show", "acme").stdout
    assert "state\tterminated" in shown
    assert shown.count("# ") == 3
    assert "suspended by cli:" in shown
    assert ": complaints" in shown


def test_purged_reply_is_recorded(tmp_path):
    """The purge reply is what `queue` history and DSN logic see."""
    assert PURGED_REPLY.startswith("purged")
