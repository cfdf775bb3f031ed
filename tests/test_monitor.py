"""Monitor mode per rule: the mail passes, the decision is logged, counted and journaled."""

from __future__ import annotations

from conftest import (
    PASSWORD,
    config_data,
    eventually,
    scrape,
    simple_message,
    smtp_client,
)

LOGIN = ("acme-crm", PASSWORD)


def events(log_lines, name):
    return [e for e in log_lines() if e["event"] == name]


async def send(relay, recipients):
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    refused, reply = await client.sendmail("news@acme.example", recipients, simple_message())
    await client.quit()
    return refused, reply.rsplit(" ", 1)[1]


async def rcpt_decisions(relay, queue_id):
    return {e.recipient: e.detail for e in await relay.store.journal(queue_id) if e.kind == "rcpt"}


async def test_monitor_passes_what_enforce_refuses_and_both_journal_it(
    start_relay, store_url, tls_files, upstream, log_lines
):
    """role_address in monitor mode: postmaster@ is delivered; in enforce mode it is refused."""
    decisions = {}
    for mode in ("monitor", "enforce"):
        data = config_data(
            store_url=store_url,
            upstream_port=upstream.port,
            tls_files=tls_files,
            policies={"role_address": {"mode": mode}},
        )
        relay = await start_relay(data)
        refused, queue_id = await send(relay, ["postmaster@example.org", "jo@example.org"])
        journaled = await rcpt_decisions(relay, queue_id)
        decisions[mode] = journaled["postmaster@example.org"]
        assert journaled["jo@example.org"] == {"n": 2, "verdict": "accept"}
        if mode == "monitor":
            assert refused == {}
            await eventually(
                lambda: "postmaster@example.org" in [m.rcpt for m in upstream.messages]
            )
            samples = await scrape(relay.web_port)
            key = ("optin_relay_policy_would_refuse_total", (("rule", "role_address.refused"),))
            assert samples[key] >= 1
            (logged,) = events(log_lines, "policy_would_refuse")
            assert (logged["rule"], logged["stage"], logged["fact_local_part"]) == (
                "role_address.refused",
                "rcpt",
                "postmaster",
            )
        else:
            assert list(refused) == ["postmaster@example.org"]
        await relay.stop()
    monitored = decisions["monitor"]
    assert monitored["verdict"] == "accept"
    (would,) = monitored["monitored"]
    enforced = decisions["enforce"]
    assert enforced["verdict"] == "reject"
    # the same decision: policy, rule, reply and facts; only the mode differs
    assert would.pop("mode") == "monitor"
    assert would == {k: v for k, v in enforced.items() if k != "n"}
    assert would["facts"] == {"local_part": "postmaster"}


async def test_halting_rule_in_monitor_mode_logs_and_does_not_halt(
    start_relay, sqlite_url, tls_files, upstream, log_lines
):
    """The broadcast rule in monitor mode: past the threshold the account stays active."""
    data = config_data(
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        policies={"broadcast": {"mode": "monitor"}},
    )
    data["accounts"][0]["limits"] = {"suspicious_broadcast": 2}
    relay = await start_relay(data)
    refused, queue_id = await send(relay, [f"r{n}@example.org" for n in range(3)])
    assert refused == {}
    assert await relay.store.account_state("acme") is None  # never suspended
    (would,) = events(log_lines, "account_would_halt")
    assert (would["rule"], would["count"], would["threshold"]) == ("broadcast_halted", 3, 2)
    assert events(log_lines, "account_halted") == []
    [data_entry] = [e for e in await relay.store.journal(queue_id) if e.kind == "data"]
    assert data_entry.detail["verdict"] == "accept"
    assert data_entry.detail["monitored"][0]["rule"] == "broadcast.halted"
    assert data_entry.detail["monitored"][0]["facts"]["recipients"] == 3
    await eventually(lambda: len(upstream.messages) == 3)
