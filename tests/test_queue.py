"""The queue as Postfix users know it: list, show, retry, hold, release, delete [--dsn].

Through the real server: the changes are made by the command line (another process's view of
the store) and the running relay acts on them at its next poll.
"""

from __future__ import annotations

import asyncio
import json

import yaml
from clirun import run_cli
from conftest import (
    PASSWORD,
    RelayProcess,
    TestUpstream,
    config_data,
    eventually,
    free_port,
    read_events,
    simple_message,
    smtp_client,
)

from relay.clock import SystemClock

LOGIN = ("acme-crm", PASSWORD)


async def send_one(port: int, recipient: str) -> str:
    """Send one message; its queue id."""
    client = await smtp_client(port, login=LOGIN)
    _, reply = await client.sendmail("news@acme.example", [recipient], simple_message())
    await client.quit()
    return reply.rsplit(" ", 1)[1]


def events(log_lines, name):
    return [e for e in log_lines() if e["event"] == name]


def delivered_to(upstream: TestUpstream) -> list[str]:
    return [m.rcpt for m in upstream.messages]


async def test_hold_release_delete_and_dsn(start_relay, store_url, tls_files, log_lines, tmp_path):
    """A hold survives a retry; release lets it go; delete --dsn tells the sender, delete not."""
    port = free_port()
    data = config_data(store_url=store_url, upstream_port=port, tls_files=tls_files)
    relay = await start_relay(data, clock=SystemClock())  # the command line's clock too
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(data))
    smtp = relay.smtp_ports[0]
    ids = {n: await send_one(smtp, f"{n}@example.net") for n in ("held", "go", "gone", "told")}
    await eventually(lambda: len(events(log_lines, "delivery_deferred")) == 4)

    def cli(*args: str, check: bool = True):
        return run_cli("queue", *args, "--config", str(path), check=check)

    held = await asyncio.to_thread(cli, "hold", ids["held"], "--reason", "customer asked")
    assert held.stdout.strip() == f"1 messages held: {ids['held']}"
    listed = await asyncio.to_thread(cli, "list", "--state", "held", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["message_id"], r["recipient"], r["state"]) for r in rows] == [
        (ids["held"], "held@example.net", "held")
    ]
    deferred = await asyncio.to_thread(cli, "list", "--state", "deferred", "--account", "acme")
    assert len(deferred.stdout.splitlines()) == 3

    upstream = TestUpstream()
    await upstream.start(port)
    try:
        quiet = await asyncio.to_thread(cli, "delete", ids["gone"])
        assert quiet.stdout.strip() == "1 recipients deleted"
        told = await asyncio.to_thread(cli, "delete", "--dsn", ids["told"], "--reason", "spam")
        assert told.stdout.strip() == "1 recipients deleted, 1 DSNs queued"
        await asyncio.to_thread(cli, "retry", "--all")
        # the DSN about `told` goes to the sender; `go` is delivered; `held` and `gone` are not
        await eventually(
            lambda: sorted(delivered_to(upstream)) == ["go@example.net", "news@acme.example"],
            timeout=5,
        )
        dsn = next(m for m in upstream.messages if m.rcpt == "news@acme.example")
        assert dsn.mail_from == "<>"
        assert b"told@example.net" in dsn.content
        assert b"Deleted from the queue" in dsn.content
        await asyncio.sleep(1.0)  # a poll or more: the held message stays put
        assert sorted(delivered_to(upstream)) == ["go@example.net", "news@acme.example"]

        shown = await asyncio.to_thread(cli, "show", ids["held"])
        assert f"queue id:  {ids['held']}" in shown.stdout
        assert "held:      since" in shown.stdout
        assert "<held@example.net>  pending  attempts 1" in shown.stdout
        assert "Subject: Test" in shown.stdout

        released = await asyncio.to_thread(cli, "release", ids["held"])
        assert released.stdout.strip() == f"1 messages released: {ids['held']}"
        await eventually(lambda: "held@example.net" in delivered_to(upstream), timeout=5)
    finally:
        await upstream.stop()

    gone = await asyncio.to_thread(cli, "show", ids["gone"])
    assert "<gone@example.net>  deleted  attempts 1" in gone.stdout
    assert "Deleted from the queue" in gone.stdout
    missing, usage = [
        await asyncio.to_thread(cli, *a, check=False) for a in (("show", "NOSUCHID"), ("hold",))
    ]
    assert (missing.returncode, usage.returncode) == (1, 2)
    assert "no message NOSUCHID" in missing.stderr

    await check_records(relay, ids, [held, released, told])


async def check_records(relay, ids, results) -> None:
    """The CRM learns of both deletions; the audit trail and the log say who, when and why."""
    feed = await read_events(relay.store, 2, types=frozenset({"message.failed"}))
    assert {(e.recipient, e.data["deleted"], e.data["status"]) for e in feed} == {
        ("gone@example.net", True, "5.0.0"),
        ("told@example.net", True, "5.0.0"),
    }
    trail = await relay.store.queue_actions(ids["held"])
    assert [(a.action, a.reason) for a in trail] == [
        ("hold", "customer asked"),
        ("retry", None),
        ("release", None),
    ]
    assert all(a.actor.startswith("cli") for a in trail)
    assert [(a.action, a.reason) for a in await relay.store.queue_actions(ids["told"])] == [
        ("delete_dsn", "spam")
    ]
    # The commands ran in this process while the relay ran on: its log lines written meanwhile
    # land in their captured output too (clirun swaps the process's logging).
    logged = [json.loads(line) for r in results for line in r.stderr.splitlines()]
    logged = [e for e in logged if e["event"].startswith("queue_")]
    assert all("count" in e for e in logged), logged
    assert [(e["event"], e["count"], e["reason"]) for e in logged] == [
        ("queue_held", 1, "customer asked"),
        ("queue_released", 1, None),
        ("queue_deleted", 1, "spam"),
    ]


async def test_two_processes_on_postgresql_honour_hold_and_release(tmp_path, pg_url, tls_files):
    """Both nodes of one store leave a held message alone and deliver it once released."""
    port = free_port()
    data = config_data(store_url=pg_url, upstream_port=port, tls_files=tls_files)
    paths = []
    for n in range(2):
        path = tmp_path / f"node{n}.yaml"
        path.write_text(yaml.safe_dump(data))
        paths.append(path)
    nodes = [RelayProcess(path) for path in paths]
    ports = [await node.start() for node in nodes]
    upstream = TestUpstream()
    try:
        ids = [await send_one(ports[n % 2], f"r{n}@example.net") for n in range(6)]
        await eventually(
            lambda: sum(len(node.events("delivery_deferred")) for node in nodes) == 6, timeout=10
        )

        def cli(*args: str):
            return run_cli("queue", *args, "--config", str(paths[0]))

        await asyncio.to_thread(cli, "hold", *ids[:3])
        await upstream.start(port)
        await asyncio.to_thread(cli, "retry", "--all")
        await eventually(lambda: len(upstream.messages) == 3, timeout=5)
        await asyncio.sleep(1.0)
        assert sorted(delivered_to(upstream)) == [f"r{n}@example.net" for n in range(3, 6)]
        await asyncio.to_thread(cli, "delete", "--dsn", ids[0])
        await asyncio.to_thread(cli, "release", "--account", "acme")
        await eventually(lambda: len(upstream.messages) == 6, timeout=5)
        assert sorted(delivered_to(upstream)) == sorted(
            ["news@acme.example", *(f"r{n}@example.net" for n in range(1, 6))]
        )
        await eventually(lambda: sum(len(node.events("delivery_succeeded")) for node in nodes) == 6)
    finally:
        for node in nodes:
            await node.terminate()
        await upstream.stop()
