"""Webhooks end to end: a real receiver on a loopback port gets every event, signed."""

from __future__ import annotations

import asyncio
import itertools
import json
import re

import pytest
import yaml
from aiohttp import web
from clirun import run_cli
from conftest import (
    PASSWORD,
    config_data,
    eventually,
    free_port,
    read_events,
    settles,
    simple_message,
    smtp_client,
)
from receiver import OLD_SECRET, SECRET, Receiver, started, webhook_data

from relay.delivery.webhooks import endpoint_key, forbidden, retry_delay
from relay.storage import open_store
from relay.storage.records import NewEvent


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def send(relay, recipients=("a@example.net",)):
    client = await smtp_client(relay.smtp_ports[0], login=("acme-crm", PASSWORD))
    await client.sendmail("news@acme.example", list(recipients), simple_message())
    await client.quit()


async def test_events_arrive_signed_in_order(start_relay, store_url, upstream, tls_files, receiver):
    """Each event once, in the feed's order, verifying with either secret (rotation)."""
    url = f"http://127.0.0.1:{receiver.port}/hook"
    relay = await started(start_relay, webhook_data(store_url, upstream, tls_files, url))
    await send(relay, ["a@example.net", "b@example.net"])
    await eventually(lambda: len(receiver.received) == 3)
    events = receiver.events()
    assert [e["type"] for e in events] == [
        "message.accepted",
        "message.delivered",
        "message.delivered",
    ]
    assert receiver.events(OLD_SECRET) == events  # both secrets sign each request
    headers = receiver.received[0][0]
    assert headers["webhook-id"] == events[0]["id"]
    assert headers["Content-Type"] == "application/json"
    assert events[0]["account"] == "acme"
    assert sorted(e["recipient"] for e in events[1:]) == ["a@example.net", "b@example.net"]

    async def progress():
        (state,) = await relay.store.webhook_states()
        return state.delivered, state.attempts, state.disabled_at

    await settles(progress, (3, 0, None))  # recorded just after each 2xx
    # An endpoint at the newest event costs no write: no lease is even tried (once a round
    # that began before the last event was recorded has ended).
    await asyncio.sleep(0.3)
    leases = []
    lease = relay.store.webhook_lease

    async def counted(*args, **kwargs):
        leases.append(args)
        return await lease(*args, **kwargs)

    relay.store.webhook_lease = counted
    await asyncio.sleep(0.3)  # six polls
    assert leases == []
    await send(relay, ["c@example.net"])
    await eventually(lambda: len(receiver.received) == 5)
    assert len(leases) >= 1


@pytest.mark.parametrize("host", ["127.0.0.1", "[::127.0.0.1]", "[64:ff9b::7f00:1]"])
async def test_an_endpoint_on_loopback_is_refused_unless_allowed(
    start_relay, store_url, upstream, tls_files, receiver, log_lines, host
):
    """Account-supplied URLs are untrusted: loopback gets nothing without allow_private.

    Nor do IPv6 forms that lead to it (IPv4-compatible, NAT64): the relay once connected there.
    """
    url = f"http://{host}:{receiver.port}/hook"
    data = webhook_data(store_url, upstream, tls_files, url, allow_private=False)
    relay = await started(start_relay, data)
    await send(relay)
    await eventually(lambda: [e for e in log_lines() if e["event"] == "webhook_failed"])
    assert receiver.received == []
    states = await relay.store.webhook_states()
    assert len(states) == 1, states
    assert "private or reserved address" in states[0].last_error
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "::1",
        "fd00:ec2::254",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 (RFC 6052) of 169.254.169.254
        "64:ff9b::c0a8:101",  # ... of 192.168.1.1
        "64:ff9b:1::808:808",  # the NAT64 local-use prefix (RFC 8215): the operator's own
        "::127.0.0.1",  # IPv4-compatible (RFC 4291, deprecated)
        "::a9fe:a9fe",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    ):
        assert forbidden(address), address
    for address in ("93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1", "2606:4700::1111"):
        assert not forbidden(address), address  # the same forms of a public address


async def test_a_failing_endpoint_is_retried_then_gets_everything(
    start_relay, store_url, upstream, tls_files, clock, log_lines
):
    """Down for an hour (nothing listening, then 500s), then back: every event, as stored."""
    receiver = Receiver()
    url = f"http://127.0.0.1:{receiver.port}/hook"
    relay = await started(start_relay, webhook_data(store_url, upstream, tls_files, url))
    await send(relay, ["a@example.net"])
    await send(relay, ["b@example.net"])
    await eventually(lambda: [e for e in log_lines() if e["event"] == "webhook_failed"])
    states = await relay.store.webhook_states()
    assert len(states) == 1, states
    assert states[0].attempts == 1
    for _ in range(12):  # an hour of retries on the schedule (5 s, 10 s, 20 s ... apart)
        clock.advance(300)
        relay.webhooks.wake()
        await asyncio.sleep(0.05)
    await eventually(lambda: len([e for e in log_lines() if e["event"] == "webhook_failed"]) >= 3)
    failures = [e for e in log_lines() if e["event"] == "webhook_failed"]
    assert all(b["next_attempt"] > a["next_attempt"] for a, b in itertools.pairwise(failures))
    await receiver.start()

    def woken(check):  # the service is woken at each look: a wake while it is busy is not lost
        def look() -> bool:
            relay.webhooks.wake()
            return bool(check())

        return look

    try:
        receiver.status = 500  # up, but failing
        clock.advance(LONG_ENOUGH)
        # The 500 is recorded (its next attempt set from the clock of that moment) before the
        # clock moves on: advanced earlier, the next attempt would lie beyond the advance.
        failed = len(failures)
        await eventually(
            woken(lambda: len([e for e in log_lines() if e["event"] == "webhook_failed"]) > failed)
        )
        assert len(receiver.received) >= 1
        receiver.status = 200
        clock.advance(LONG_ENOUGH)
        stored = await read_events(relay.store, 4)  # 2 accepted, 2 delivered
        await eventually(woken(lambda: len({e["id"] for e in receiver.events()}) == len(stored)))
        delivered = receiver.events()
        assert [e["id"] for e in delivered][-len(stored) :] == [e.id for e in stored]
        assert {e["id"]: e for e in delivered} == {e.id: e.payload() for e in stored}
    finally:
        await receiver.stop()


LONG_ENOUGH = 7 * 3600  # past the longest retry delay


async def test_an_endpoint_failing_past_retry_for_is_disabled(
    start_relay, store_url, upstream, tls_files, clock, log_lines
):
    """Failing for `retry_for`: disabled, logged for the operator, and the contact gets mail."""
    url = f"http://127.0.0.1:{free_port()}/hook"
    data = webhook_data(store_url, upstream, tls_files, url, retry_for=3600)
    relay = await started(start_relay, data)
    await send(relay)
    await eventually(lambda: [e for e in log_lines() if e["event"] == "webhook_failed"])
    for _ in range(3):
        clock.advance(LONG_ENOUGH)
        relay.webhooks.wake()
        await asyncio.sleep(0.1)
    await eventually(lambda: [e for e in log_lines() if e["event"] == "webhook_disabled"])
    (state,) = await relay.store.webhook_states()
    assert state.disabled_at is not None
    assert state.key == endpoint_key("acme", url)
    # The account's contact is told, by mail through the relay itself.
    relay.delivery.wake()
    await eventually(lambda: [m for m in upstream.messages if m.rcpt == "abuse-desk@acme.example"])
    # One notice (the test's clock jumps may have it delivered twice: at least once).
    notices = {m.message["Message-ID"]: m for m in upstream.messages if m.rcpt.startswith("abuse")}
    assert len(notices) == 1
    assert f"Webhook disabled: {url}" in next(iter(notices.values())).message["Subject"]


def test_retry_delays_double_with_jitter_and_a_cap():
    """5 s, 10 s, 20 s ... never more than 6 hours, each within 20% of its base."""
    import random

    rng = random.Random(1)
    delays = [retry_delay(n, rng) for n in range(1, 20)]
    assert 4 <= delays[0] <= 6
    assert 8 <= delays[1] <= 12
    assert max(delays) <= 6 * 3600 * 1.2
    assert delays[-1] >= 6 * 3600 * 0.8


def test_webhook_secrets_and_types_are_checked(tmp_path, sqlite_url, tls_files):
    """A secret that is not whsec_ and base64 of 24-64 bytes, or an unknown type, is refused."""
    from relay.config import ConfigError, parse_config

    for hook, problem in [
        ({"url": "https://crm.example/h", "secret": "plain"}, "whsec_"),
        ({"url": "https://crm.example/h", "secret": SECRET, "events": ["mail.sent"]}, "mail.sent"),
        ({"url": "ftp://crm.example/h", "secret": SECRET}, "url"),
    ]:
        data = config_data(store_url=sqlite_url, upstream_port=25, tls_files=tls_files)
        data["accounts"][0]["webhooks"] = [hook]
        with pytest.raises(ConfigError, match=problem):
            parse_config(json.loads(json.dumps(data)), base_dir=tmp_path)


async def test_the_cli_shows_tests_and_enables_endpoints(
    start_relay, sqlite_url, upstream, tls_files, clock, log_lines, tmp_path
):
    """`status` names a disabled endpoint; `enable` resumes it; `test` pings; `replay` resends."""
    receiver = Receiver()
    url = f"http://127.0.0.1:{receiver.port}/hook"
    data = webhook_data(sqlite_url, upstream, tls_files, url, retry_for=3600)
    relay = await started(start_relay, data)
    await send(relay)
    for _ in range(3):
        clock.advance(LONG_ENOUGH)
        relay.webhooks.wake()
        await asyncio.sleep(0.1)
    await eventually(lambda: [e for e in log_lines() if e["event"] == "webhook_disabled"])
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data))))
    status = await asyncio.to_thread(run_cli, "webhooks", "status", "--config", str(path))
    header, row = status.stdout.splitlines()
    assert header.split("\t")[:8] == [
        "account", "url", "state", "delivered", "cursor", "behind", "oldest_waiting", "lease"
    ]  # fmt: skip
    fields = row.split("\t")
    assert fields[:4] == ["acme", url, "disabled", "0"]
    assert fields[5] == "2"  # message.accepted and message.delivered wait for it
    assert fields[6].endswith("s")  # how long the oldest has waited
    assert fields[7] == "-"  # disabled: no relay holds it
    failed = await asyncio.to_thread(
        run_cli, "webhooks", "test", "acme", "--config", str(path), check=False
    )
    assert failed.returncode == 1
    assert "failed: ClientConnectorError" in failed.stdout
    await receiver.start()
    try:
        ok = await asyncio.to_thread(run_cli, "webhooks", "test", "acme", "--config", str(path))
        assert f"{url}\tok" in ok.stdout
        assert [e["type"] for e in receiver.events()] == ["webhook.test"]
        assert re.fullmatch(r"evt_[0-9a-f]{24}", receiver.events()[0]["id"])  # as documented
        await asyncio.to_thread(run_cli, "webhooks", "enable", "acme", url, "--config", str(path))
        relay.webhooks.wake()
        await eventually(lambda: len(receiver.received) >= 3)  # the test, then the two events
        assert [e["type"] for e in receiver.events()[1:3]] == [
            "message.accepted",
            "message.delivered",
        ]
        listed = await asyncio.to_thread(run_cli, "webhooks", "list", "--config", str(path))
        assert listed.stdout == f"acme\t{url}\tall events\n"
        replay = ("webhooks", "replay", "acme", url, "--since", "1d", "--config", str(path))
        replayed = await asyncio.to_thread(run_cli, *replay)
        assert "\treplaying 2 events from " in replayed.stdout
        # The command runs in this process while the relay runs on: the log lines the relay
        # writes meanwhile land in the command's captured output too (clirun swaps the
        # process's logging): only the command's own event counts.
        logged = [json.loads(line) for line in replayed.stderr.splitlines()]
        mine = [e for e in logged if e["event"].startswith("webhook_replay")]
        assert [(e["event"], e["events"]) for e in mine] == [("webhook_replayed", 2)]
        relay.webhooks.wake()
        await eventually(lambda: len(receiver.received) >= 5)  # the two events once more
        ids = [e["id"] for e in receiver.events()]
        assert ids[3:5] == ids[1:3]  # the same events again, same ids: receivers can drop them
    finally:
        await receiver.stop()


async def test_a_redirect_is_not_followed(start_relay, sqlite_url, upstream, tls_files, log_lines):
    """A 3xx is a failure: the relay never follows an endpoint elsewhere."""
    target = Receiver()
    await target.start()
    redirecting = web.Application()

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{target.port}/hook")

    redirecting.router.add_post("/hook", moved)
    runner = web.AppRunner(redirecting, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        url = f"http://127.0.0.1:{port}/hook"
        relay = await started(start_relay, webhook_data(sqlite_url, upstream, tls_files, url))
        await send(relay)
        await eventually(lambda: [e for e in log_lines() if e["event"] == "webhook_failed"])
        failed = next(e for e in log_lines() if e["event"] == "webhook_failed")
        assert failed["error"] == "HTTP 302"
        assert target.received == []
    finally:
        await runner.cleanup()
        await target.stop()


async def test_an_endpoint_whose_place_lies_past_the_feed_is_logged(
    start_relay, sqlite_url, upstream, tls_files, receiver, clock, log_lines
):
    """A place the store never issued (an older backup restored): an error, never a re-read."""
    url = f"http://127.0.0.1:{receiver.port}/hook"
    store = open_store(sqlite_url)
    await store.open()
    await store.migrate()
    now = clock.now()
    key = endpoint_key("acme", url)
    assert await store.webhook_lease(
        key, "acme", url, start="99999", lease="before", now=now, lease_until=now
    )
    await store.close()
    relay = await start_relay(webhook_data(sqlite_url, upstream, tls_files, url))
    await send(relay)
    await eventually(lambda: any(e["event"] == "webhook_cursor_invalid" for e in log_lines()))
    logged = next(e for e in log_lines() if e["event"] == "webhook_cursor_invalid")
    assert (logged["account_id"], logged["url"], logged["level"]) == ("acme", url, "error")
    assert receiver.received == []  # not the feed again from its start


async def test_a_replay_is_not_undone_by_a_delivery_in_flight(store):
    """A relay's advance recorded after a rewind does not undo the rewind.

    `replay` rewinds an endpoint while a relay is delivering to it; that relay's advance came
    after and moved the endpoint past the replayed events again: `replay` said 0 events, and
    none were sent again.
    """
    now = 1_800_000_000.0
    events = [NewEvent("message.accepted", "acme", now + n, message_id=f"M{n}") for n in range(2)]
    await store.record_events(events, [])
    feed = await read_events(store, 2)  # on PostgreSQL, once other transactions let them show
    url = "http://127.0.0.1:9/hook"
    key = endpoint_key("acme", url)
    assert await store.webhook_lease(
        key, "acme", url, start=None, lease="node-a", now=now, lease_until=now + 60
    )
    assert await store.webhook_rewind(key, "acme", since=0, now=now)
    # node-a had sent both events before the rewind and records that only now
    assert not await store.webhook_advance(key, "node-a", cursor=feed[-1].cursor, sent=2)
    (state,) = await store.webhook_states()
    assert state.cursor is None
    assert state.lease is None
    assert await store.events_behind("acme", state.cursor) == (2, now)
