"""Permission enforcement: consent, unsolicited bulk, broadcast halts, violations, rate limits."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiosmtplib
import pytest
import yaml
from conftest import (
    PASSWORD,
    RelayProcess,
    TestUpstream,
    config_data,
    eventually,
    free_port,
    simple_message,
    smtp_client,
)
from messages import newsletter

from relay.storage.records import Consent, Suppression

LOGIN = ("acme-crm", PASSWORD)


def acme(data, **fields):
    data["accounts"][0].update(fields)
    return data


async def rcpt(client, address):
    response = await client.execute_command(f"RCPT TO:<{address}>".encode())
    return response.code, response.message


def events(log_lines, name):
    return [e for e in log_lines() if e["event"] == name]


async def test_monitor_mode_halts_unsolicited_bulk(
    start_relay, store_url, tls_files, clock, log_lines, tmp_path
):
    """Monitor mode: 11 people without opt-in suspend the account at the 11th.

    Its next MAIL is refused, its queued mail held; `accounts reinstate` releases it.
    """
    port = free_port()  # upstream down: the accepted mail stays queued
    data = acme(
        config_data(store_url=store_url, upstream_port=port, tls_files=tls_files), consent="monitor"
    )
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    for n in range(10):
        await client.sendmail("news@acme.example", [f"stranger{n}@example.net"], simple_message())
    assert len(events(log_lines, "consent_missing")) == 10
    await client.mail("news@acme.example")
    code, message = await rcpt(client, "stranger10@example.net")
    assert (code, message[:5]) == (550, "5.7.1")
    assert "Unsolicited bulk" in message
    await client.quit()
    halted = events(log_lines, "account_halted")
    assert [(e["rule"], e["count"], e["threshold"]) for e in halted] == [
        ("unsolicited_bulk", 11, 10)
    ]

    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await client.mail("news@acme.example")
    assert refused.value.code == 550
    await client.quit()

    upstream = TestUpstream()
    await upstream.start(port)
    try:
        clock.advance(3600)
        relay.delivery.wake()
        await asyncio.sleep(0.5)
        assert upstream.messages == []  # held
        path = tmp_path / "relay.yaml"
        path.write_text(yaml.safe_dump(data))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "relay",
                "accounts",
                "reinstate",
                "acme",
                "--reason",
                "records shown",
                "--config",
                str(path),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "10 queued recipients released" in result.stdout
        relay.delivery.wake()
        await eventually(lambda: len(upstream.messages) == 10)
    finally:
        await upstream.stop()


async def test_enforce_mode_needs_an_opt_in_record(
    start_relay, store_url, tls_files, upstream, clock
):
    """Enforce: no record, 550 5.7.1 at RCPT; with a (confirmed) record, accepted."""
    relay = await start_relay(
        acme(
            config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files),
            consent="enforce",
        )
    )
    await relay.store.record_consents(
        [
            Consent(
                "acme",
                "Fan@Example.net",
                "news",
                "confirmed",
                clock.now(),
                clock.now() + 30,
                "form:signup",
                "192.0.2.7",
            )
        ]
    )
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.mail("news@acme.example")
    code, message = await rcpt(client, "nobody@example.net")
    assert code == 550
    assert message.startswith(
        "5.7.1 <nobody@example.net> has no opt-in record with this sender; send only to"
        " subscribers whose opt-in you can show"
    )
    assert (await rcpt(client, "fan@example.net"))[0] == 250
    await client.quit()


async def test_personalised_broadcast_halted_and_rest_held(
    start_relay, store_url, tls_files, clock, log_lines
):
    """200 personalised copies are one broadcast, halted at the 151st (threshold 150).

    The account is suspended and what it has queued is held.
    """
    port = free_port()
    data = acme(
        config_data(store_url=store_url, upstream_port=port, tls_files=tls_files),
        limits={"suspicious_broadcast": 150},
    )
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    replies = []
    for n in range(200):
        copy = newsletter(n)
        try:
            await client.sendmail("news@acme.example", [f"reader{n}@example.net"], copy)
            replies.append(250)
        except aiosmtplib.SMTPDataError as exc:
            replies.append(exc.code)
        except aiosmtplib.SMTPSenderRefused as exc:
            replies.append(exc.code)
    await client.quit()
    assert replies[:150] == [250] * 150
    assert replies[150:] == [550] * 50
    halted = events(log_lines, "account_halted")
    assert [(e["rule"], e["count"], e["threshold"]) for e in halted] == [
        ("broadcast_halted", 151, 150)
    ]
    state = await relay.store.account_state("acme")
    assert (state.state, state.reason) == ("suspended", "broadcast_halted: 151 > 150")
    upstream = TestUpstream()
    await upstream.start(port)
    try:
        clock.advance(3600)
        relay.delivery.wake()
        await asyncio.sleep(0.5)
        assert upstream.messages == []
        assert len(await relay.store.queue()) == 150
    finally:
        await upstream.stop()


async def test_suppression_violations_suspend(
    start_relay, sqlite_url, tls_files, upstream, clock, log_lines
):
    """Mailing suppressed addresses again and again suspends the account."""
    data = acme(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files),
        limits={"suppression_violations": 3},
    )
    relay = await start_relay(data)
    await relay.store.suppress_many(
        [Suppression(f"gone{n}@example.net", "acme", "unsubscribe", "t", 0) for n in range(5)]
    )
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.mail("news@acme.example")
    codes = [(await rcpt(client, f"gone{n}@example.net"))[0] for n in range(4)]
    await client.quit()
    assert codes == [550] * 4
    assert [e["rule"] for e in events(log_lines, "account_halted")] == ["suppression_violations"]
    assert (await relay.store.account_state("acme")).state == "suspended"


async def test_rate_limits_within_one_relay(start_relay, sqlite_url, tls_files, upstream, clock):
    """Recipients per message and per hour answer 451 4.7.0; the hour passes, the budget returns."""
    data = acme(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files),
        limits={"recipients_per_message": 3, "recipients_per_hour": 5, "per_domain_per_hour": 4},
    )
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.mail("news@acme.example")
    codes = [(await rcpt(client, f"r{n}@example.net"))[0] for n in range(4)]
    assert codes == [250, 250, 250, 451]
    await client.execute_command(b"RSET")
    await client.mail("news@acme.example")
    second = [await rcpt(client, f"s{n}@example.org") for n in range(3)]
    assert [c for c, _ in second] == [250, 250, 451]
    assert second[2][1] == "4.7.0 Rate limit: 5 recipients per hour; try again later"
    await client.execute_command(b"RSET")
    clock.advance(3661)  # counts are per minute: the hour's first minute must have passed entirely
    await client.mail("news@acme.example")
    assert (await rcpt(client, "t@example.net"))[0] == 250
    await client.quit()


async def test_recipient_deferred_for_its_domain_spends_no_hourly_budget(
    start_relay, sqlite_url, tls_files, upstream
):
    """A recipient over the per-domain limit is deferred without counting against the hour."""
    data = acme(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files),
        limits={"recipients_per_hour": 3, "per_domain_per_hour": 1},
    )
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.mail("news@acme.example")
    answers = [
        await rcpt(client, address)
        for address in (
            "a@example.net",
            "b@example.net",
            "c@example.org",
            "d@example.com",
            "e@example.io",
        )
    ]
    assert [code for code, _ in answers] == [250, 451, 250, 250, 451]
    assert answers[1][1] == "4.7.0 Rate limit: 1 recipients per domain per hour; try again later"
    assert answers[4][1] == "4.7.0 Rate limit: 3 recipients per hour; try again later"
    await client.quit()


async def test_rate_limits_hold_across_two_processes(tmp_path, pg_url, tls_files, upstream):
    """Two relay processes sharing one PostgreSQL store share one budget of messages per hour."""
    data = acme(
        config_data(store_url=pg_url, upstream_port=upstream.port, tls_files=tls_files),
        limits={"messages_per_hour": 30},
    )
    paths = []
    for n in range(2):
        path = tmp_path / f"node{n}.yaml"
        path.write_text(yaml.safe_dump(data))
        paths.append(path)
    nodes = [RelayProcess(path) for path in paths]
    ports = [await node.start() for node in nodes]
    try:

        async def send(port, count):
            accepted = deferred = 0
            client = await smtp_client(port, login=LOGIN)
            for _ in range(count):
                response = await client.execute_command(b"MAIL FROM:<news@acme.example>")
                if response.code == 250:
                    accepted += 1
                    await client.execute_command(b"RSET")
                else:
                    assert (response.code, response.message[:5]) == (451, "4.7.0")
                    deferred += 1
            await client.quit()
            return accepted, deferred

        results = await asyncio.gather(send(ports[0], 25), send(ports[1], 25))
        assert sum(a for a, _ in results) == 30
        assert sum(d for _, d in results) == 20
        assert all(a > 0 for a, _ in results)  # both nodes drew on the one budget
    finally:
        for node in nodes:
            await node.terminate()


async def test_role_address_policy_is_one_config_section(
    start_relay, sqlite_url, tls_files, upstream, log_lines
):
    """docs/policies.md's worked example through the real server: one config section.

    A role address gets 550 5.7.1 at RCPT; a person's address is relayed.
    """
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    data["policies"] = {"role_address": {}}
    relay = await start_relay(data)
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.mail("news@acme.example")
    code, message = await rcpt(client, "postmaster@example.net")
    assert code == 550
    assert message.startswith("5.7.1 <postmaster@example.net> is a role address")
    assert (await rcpt(client, "ann@example.net"))[0] == 250
    await client.data(simple_message())
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)
    assert upstream.messages[0].rcpt == "ann@example.net"
    (refused,) = events(log_lines, "recipient_rejected")
    assert refused["rule"] == "role_address.refused"
