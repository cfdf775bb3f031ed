"""Never lose an accepted message: SIGKILL after 250, and two relays sharing one spool."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
import yaml
from aiohttp import web
from clirun import run_cli
from conftest import (
    PASSWORD,
    PASSWORD_HASH,
    RelayProcess,
    TestUpstream,
    assert_relayed_intact,
    config_data,
    eventually,
    free_port,
    read_events,
    simple_message,
    smtp_client,
)
from receiver import SECRET, Receiver

from relay.storage import open_store

pytestmark = pytest.mark.slow
LOGIN = ("acme-crm", PASSWORD)


def write_config(tmp_path, name, **kwargs):
    data = config_data(**kwargs)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Blackhole:
    """Accepts TCP connections and never answers: a delivery to it stays in flight."""

    def __init__(self) -> None:
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self, port: int) -> None:
        async def handle(reader, writer):
            self.connections += 1
            self.writers.append(writer)
            await reader.read()

        self.server = await asyncio.start_server(handle, "127.0.0.1", port)

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


async def test_sigkill_after_250_before_delivery(tmp_path, store_url, tls_files):
    """The relay killed with SIGKILL while delivering: after a restart the message is delivered."""
    port = free_port()
    hole = Blackhole()
    await hole.start(port)
    path = write_config(
        tmp_path,
        "relay",
        store_url=store_url,
        upstream_port=port,
        tls_files=tls_files,
        upstream={"timeout": 60},
        delivery={"lease": 2, "retry_schedule": [1], "poll_interval": 0.1},
    )
    relay = RelayProcess(path)
    smtp_port = await relay.start()
    message = simple_message(body="must survive SIGKILL")
    client = await smtp_client(smtp_port, login=LOGIN)
    _, reply = await client.sendmail("news@acme.example", ["alice@example.net"], message)
    await client.quit()
    assert reply.startswith("2.0.0 Ok: queued as")
    await eventually(lambda: hole.connections == 1)  # delivery is in flight, not finished
    relay.kill()
    assert await relay.wait() == -signal.SIGKILL
    await hole.stop()

    upstream = TestUpstream()
    await upstream.start(port)
    restarted = RelayProcess(path)
    try:
        await restarted.start()
        await eventually(lambda: len(upstream.messages) == 1, timeout=30)
        assert_relayed_intact(upstream.messages[0].content, message)
        assert upstream.messages[0].rcpt == "alice@example.net"
    finally:
        await restarted.terminate()
        await upstream.stop()


async def test_two_relays_share_postgres_spool_exactly_once(tmp_path, pg_url, tls_files):
    """Two relay processes on one PostgreSQL database deliver a shared load exactly once."""
    upstream = TestUpstream()
    await upstream.start()
    paths = [
        write_config(
            tmp_path,
            f"node{n}",
            store_url=pg_url,
            upstream_port=upstream.port,
            tls_files=tls_files,
            upstream={"connections": 4},
            delivery={"poll_interval": 0.05, "batch": 20},
        )
        for n in range(2)
    ]
    nodes = [RelayProcess(path) for path in paths]
    ports = [await node.start() for node in nodes]
    total = 200
    try:

        async def submit(port: int, first: int, count: int) -> None:
            client = await smtp_client(port, login=LOGIN)
            for n in range(first, first + count):
                # Several recipients per message, so both nodes' workers share each message.
                rcpts = [f"user{n}-{i}@example.net" for i in range(2)]
                await client.sendmail("news@acme.example", rcpts, simple_message(body=f"#{n}"))
            await client.quit()

        await asyncio.gather(*(submit(ports[k % 2], k * 25, 25) for k in range(total // 25)))
        await eventually(lambda: len(upstream.messages) >= total * 2, timeout=60)
        await asyncio.sleep(1.0)  # anything delivered twice would show up now
        copies = Counter(m.rcpt for m in upstream.messages)
        assert len(copies) == total * 2
        assert set(copies.values()) == {1}
        by_node = [len(node.events("delivery_succeeded")) for node in nodes]
        assert sum(by_node) == total * 2
    finally:
        for node in nodes:
            await node.terminate()
        await upstream.stop()


async def test_processes_share_one_port_and_one_sqlite_file(tmp_path, sqlite_url, tls_files):
    """Two `serve` processes on one configuration share one port and one SQLite file.

    One SMTP port (SO_REUSEPORT), one SQLite file, each its own HTTP address (`--web-listen`):
    a shared load goes out exactly once.
    """
    upstream = TestUpstream()
    await upstream.start()
    smtp_port = free_port()
    path = write_config(
        tmp_path,
        "relay",
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        listeners=[{"address": f"127.0.0.1:{smtp_port}", "tls": "starttls"}],
        smtp={"reuse_port": True},
        delivery={"poll_interval": 0.05, "batch": 20},
    )
    web_ports = [free_port(), free_port()]
    nodes = [RelayProcess(path, "--web-listen", f"127.0.0.1:{port}") for port in web_ports]
    try:
        assert [await node.start() for node in nodes] == [smtp_port, smtp_port]
        async with aiohttp.ClientSession() as http:
            for port in web_ports:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    assert response.status == 200

        async def submit(first: int) -> None:
            client = await smtp_client(smtp_port, login=LOGIN)
            for n in range(first, first + 10):
                rcpts = [f"user{n}-{i}@example.net" for i in range(2)]
                await client.sendmail("news@acme.example", rcpts, simple_message(body=f"#{n}"))
            await client.quit()

        await asyncio.gather(*(submit(first) for first in range(0, 100, 10)))
        await eventually(lambda: len(upstream.messages) >= 200, timeout=60)
        await asyncio.sleep(1.0)  # anything delivered twice would show up now
        assert set(Counter(m.rcpt for m in upstream.messages).values()) == {1}
        assert len(upstream.messages) == 200
        accepted = [len(node.events("message_accepted")) for node in nodes]
        assert sum(accepted) == 100
    finally:
        for node in nodes:
            await node.terminate()
        await upstream.stop()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_sigterm_is_graceful(tmp_path, sqlite_url, tls_files, upstream, loop):
    """On either event loop: mail over STARTTLS + AUTH goes out; SIGTERM stops with exit 0."""
    path = write_config(
        tmp_path, "relay", store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files
    )
    args = ("--event-loop", loop) if loop == "asyncio" else ()  # uvloop is the default
    relay = RelayProcess(path, *args)
    port = await relay.start()
    assert [e["event_loop"] for e in relay.events("relay_started")] == [loop]
    message = simple_message(body=f"through {loop}")
    client = await smtp_client(port, login=LOGIN)
    await client.sendmail("news@acme.example", ["alice@example.net"], message)
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)
    assert_relayed_intact(upstream.messages[0].content, message)
    assert await relay.terminate() == 0
    assert relay.events("relay_stopped")


async def test_sighup_reloads_and_bad_file_keeps_old(tmp_path, sqlite_url, tls_files, upstream):
    """SIGHUP re-reads the file; a broken file is refused and the old config keeps running."""
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    relay = RelayProcess(path)
    port = await relay.start()
    try:
        data["accounts"][0]["username"] = "acme-v2"
        path.write_text(yaml.safe_dump(data))
        relay.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: bool(relay.events("config_reloaded")))
        client = await smtp_client(port, login=("acme-v2", PASSWORD))
        await client.quit()

        path.write_text("hostname: [broken\n")
        relay.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: bool(relay.events("config_reload_failed")))
        client = await smtp_client(port, login=("acme-v2", PASSWORD))
        await client.sendmail("news@acme.example", ["a@example.net"], simple_message())
        await client.quit()
        await eventually(lambda: len(upstream.messages) == 1)
    finally:
        await relay.terminate()


async def test_start_up_objects_are_set_aside_from_the_collector(
    tmp_path, sqlite_url, tls_files, upstream
):
    """`serve` freezes what start-up built (gc.freeze) once it is up, and again after a reload."""
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    relay = RelayProcess(path)
    await relay.start()
    try:
        await eventually(lambda: bool(relay.events("heap_settled")))
        # The relay's modules, configuration and pools: tens of thousands of objects.
        assert relay.events("heap_settled")[0]["frozen_objects"] > 10_000
        relay.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: len(relay.events("heap_settled")) == 2)
        assert relay.events("config_reloaded")
    finally:
        await relay.terminate()


def test_settling_again_collects_what_was_set_aside_and_then_dropped():
    """What a reload replaces is collected at the next settling, not frozen for ever."""
    import gc
    import weakref

    from relay.app import settle_heap

    class Node:
        pass

    replaced = Node()
    replaced.self = replaced  # a cycle: only the collector frees it
    gone = weakref.ref(replaced)
    try:
        assert settle_heap() >= 1
        assert gc.get_freeze_count() >= 1
        del replaced
        gc.collect()
        assert gone() is not None  # frozen: full collections leave it alone
        settle_heap()
        assert gone() is None
    finally:
        gc.unfreeze()


async def test_sighup_reads_the_file_off_the_loop(tmp_path, sqlite_url, tls_files, upstream):
    """A configuration that takes a while to read (5,000 accounts) stalls no open session.

    The file is read in a worker thread: a session opened before the SIGHUP is answered while
    the reading goes on, and the new configuration is in force once it is done.
    """
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    first = data["accounts"][0]
    data["accounts"] += [
        {**first, "id": f"x{n}", "username": f"x{n}", "from_domains": [f"x{n}.example"]}
        for n in range(5000)
    ]
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    relay = RelayProcess(path)
    port = await relay.start(timeout=120)
    try:
        client = await smtp_client(port, login=("acme-crm", PASSWORD))
        data["accounts"][0]["username"] = "acme-v2"
        path.write_text(yaml.safe_dump(data))
        relay.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.2)  # the reading has begun
        for _ in range(3):
            assert (await client.noop()).code == 250
        assert not relay.events("config_reloaded")  # answered while the file is still read
        await eventually(lambda: bool(relay.events("config_reloaded")), timeout=120)
        await client.quit()
        client = await smtp_client(port, login=("acme-v2", PASSWORD))
        await client.quit()
    finally:
        await relay.terminate()


async def test_sighup_with_included_account_files_is_atomic(
    tmp_path, sqlite_url, tls_files, upstream
):
    """accounts.d/*.yaml re-read on SIGHUP: one broken file keeps the whole old configuration."""
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    folder = tmp_path / "accounts.d"
    folder.mkdir()
    for account in data.pop("accounts"):
        (folder / f"{account['id']}.yaml").write_text(yaml.safe_dump(account))
    data["include"] = ["accounts.d/*.yaml"]
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    relay = RelayProcess(path)
    port = await relay.start()
    try:
        acme = yaml.safe_load((folder / "acme.yaml").read_text())
        acme["username"] = "acme-v2"
        (folder / "acme.yaml").write_text(yaml.safe_dump(acme))
        (folder / "globex.yaml").write_text("id: globex\nusername: [broken\n")
        relay.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: bool(relay.events("config_reload_failed")))
        (failed,) = relay.events("config_reload_failed")
        assert any(str(folder / "globex.yaml") in problem for problem in failed["problems"])
        client = await smtp_client(port, login=("acme-crm", PASSWORD))  # the old acme still
        await client.sendmail("news@acme.example", ["a@example.net"], simple_message())
        await client.quit()
        await eventually(lambda: len(upstream.messages) == 1)

        (folder / "globex.yaml").unlink()
        relay.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: bool(relay.events("config_reloaded")))
        client = await smtp_client(port, login=("acme-v2", PASSWORD))
        await client.quit()
    finally:
        await relay.terminate()


class EventReader:
    """A CRM paging through `GET /api/v1/events?limit=7` on one relay."""

    def __init__(self, http: aiohttp.ClientSession, web_port: int) -> None:
        self.http, self.web_port = http, web_port
        self.seen: list[str] = []
        self.after: str | None = None

    async def page(self) -> list[dict]:
        query = "limit=7" + (f"&after={self.after}" if self.after else "")
        async with self.http.get(
            f"http://127.0.0.1:{self.web_port}/api/v1/events?{query}",
            headers={"Authorization": f"Bearer acme:{PASSWORD}"},
        ) as response:
            assert response.status == 200
            body = await response.json()
        self.seen.extend(e["id"] for e in body["events"])
        self.after = body["next"]
        return body["events"]

    async def until(self, total: int) -> None:
        while len(self.seen) < total:
            if not await self.page():
                await asyncio.sleep(0.05)


def event_nodes(tmp_path, pg_url, tls_files, upstream_port: int, web_port: int) -> list:
    """Two relay configurations on one database; the first serves the API on `web_port`."""
    paths = []
    for n in range(2):
        data = config_data(
            store_url=pg_url,
            upstream_port=upstream_port,
            tls_files=tls_files,
            upstream={"connections": 4},
            delivery={"poll_interval": 0.05, "batch": 20},
        )
        data["accounts"][0]["api_key_hash"] = data["accounts"][0]["password_hash"]
        if n == 0:
            data["web"]["listen"] = f"127.0.0.1:{web_port}"
        path = tmp_path / f"events{n}.yaml"
        path.write_text(yaml.safe_dump(data))
        paths.append(path)
    return [RelayProcess(path) for path in paths]


async def test_events_from_two_relays_page_exactly_once(tmp_path, pg_url, tls_files):
    """1,000 events from two relay processes on one PostgreSQL, paged by 7 while written.

    Each is read exactly once, and reading again from the start gives the same order.
    """
    upstream = TestUpstream()
    await upstream.start()
    web_port = free_port()
    nodes = event_nodes(tmp_path, pg_url, tls_files, upstream.port, web_port)
    ports = [await node.start() for node in nodes]
    total = 1000  # 250 messages to 3 recipients: 250 accepted and 750 delivered

    async def submit(port: int, first: int, count: int) -> None:
        client = await smtp_client(port, login=LOGIN)
        for n in range(first, first + count):
            rcpts = [f"user{n}-{i}@example.net" for i in range(3)]
            await client.sendmail("news@acme.example", rcpts, simple_message(body=f"#{n}"))
        await client.quit()

    try:
        async with aiohttp.ClientSession() as http:
            crm = EventReader(http, web_port)
            reading = asyncio.create_task(crm.until(total))
            await asyncio.gather(*(submit(ports[k % 2], k * 25, 25) for k in range(10)))
            await asyncio.wait_for(reading, 90)
            await asyncio.sleep(1.0)
            assert await crm.page() == []  # nothing after the 1,000
            assert len(crm.seen) == len(set(crm.seen)) == total
            again = EventReader(http, web_port)
            await again.until(total)
            assert again.seen == crm.seen  # the same order when read again
    finally:
        for node in nodes:
            await node.terminate()
        await upstream.stop()


def webhook_relay_config(tmp_path, store_url, upstream, tls_files, port, **webhooks) -> Path:
    """A relay's configuration file whose account pushes its events to a receiver on `port`."""
    data = config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    data["webhooks"] = {"allow_private": True, "poll_interval": 0.05, **webhooks}
    data["accounts"][0]["webhooks"] = [{"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}]
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_webhook_events_survive_a_sigkill(tmp_path, store_url, tls_files):
    """Events waiting for a down endpoint survive SIGKILL; after a restart each arrives."""
    upstream = TestUpstream()
    await upstream.start()
    receiver = Receiver()  # not started: the endpoint is down
    path = webhook_relay_config(tmp_path, store_url, upstream, tls_files, receiver.port)
    relay = RelayProcess(path)
    port = await relay.start()
    restarted = None
    try:
        client = await smtp_client(port, login=LOGIN)
        for n in range(10):
            await client.sendmail("news@acme.example", [f"r{n}@example.net"], simple_message())
        await client.quit()
        # Every delivery recorded (its event written) before the kill: the upstream has a copy a
        # moment before the store has its outcome.
        await eventually(lambda: len(relay.events("delivery_succeeded")) == 10, timeout=30)
        await eventually(lambda: relay.events("webhook_failed"), timeout=30)
        relay.kill()
        assert await relay.wait() == -signal.SIGKILL
        await receiver.start()
        restarted = RelayProcess(path)
        await restarted.start()
        store = open_store(store_url)
        await store.open()
        try:
            stored = await read_events(store, 20)
        finally:
            await store.close()
        assert len(stored) == 20  # 10 accepted, 10 delivered
        await eventually(
            lambda: {e["id"] for e in receiver.events()} == {e.id for e in stored}, timeout=30
        )
        assert {e["id"]: e for e in receiver.events()} == {e.id: e.payload() for e in stored}
    finally:
        for process in (relay, restarted):
            if process is not None and process.proc and process.proc.returncode is None:
                await process.terminate()
        await receiver.stop()
        await upstream.stop()


async def test_sighup_reloads_go_on_after_one_fails_unexpectedly(
    tmp_path, sqlite_url, tls_files, log_lines
):
    """A reload that fails in an unforeseen way is logged; the next SIGHUP still reloads."""
    from relay.app import _reloader

    data = config_data(store_url=sqlite_url, upstream_port=25, tls_files=tls_files)
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))

    class Relay:
        def __init__(self) -> None:
            self.config = None
            self.applied: list[object] = []

        def reload(self, new):
            if not self.applied:
                self.applied.append(None)
                raise RuntimeError("a bug while applying")
            self.applied.append(new)
            self.config = new

    relay, wanted = Relay(), asyncio.Event()
    task = asyncio.create_task(_reloader(relay, wanted, path, None))
    try:
        wanted.set()
        await eventually(lambda: any(e["event"] == "config_reload_failed" for e in log_lines()))
        (failed,) = [e for e in log_lines() if e["event"] == "config_reload_failed"]
        assert failed["problems"] == ["RuntimeError: a bug while applying"]
        wanted.set()
        await eventually(lambda: len(relay.applied) == 2)
        assert relay.config.accounts[0].id == "acme"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_counts_agree_with_the_events_after_ten_sigkills(tmp_path, sqlite_url, tls_files):
    """Ten SIGKILLs under load: `stats`, the dashboard and the events feed say the same.

    Counts were added up in memory and flushed every 5 s: a kill lost them (302 delivered in
    `stats` against 402 `message.delivered` events). They are written with their events now.
    """
    upstream = TestUpstream()
    await upstream.start()
    path = write_config(
        tmp_path,
        "relay",
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        policies={"role_address": {}},  # noreply@: 550 at RCPT, an event (and no halt)
        delivery={"lease": 1, "retry_schedule": [1], "jitter": 0, "poll_interval": 0.05},
        web={"listen": f"127.0.0.1:{free_port()}", "admin_token_hash": PASSWORD_HASH},
    )
    relay = RelayProcess(path)
    await relay.start()
    load = Load()
    loading = [asyncio.create_task(load.run(lambda: relay.smtp_port)) for _ in range(2)]
    rng = random.Random(24)  # when to kill, not secrecy
    try:
        for _ in range(10):
            # Under load: each relay has taken two more messages, and more are on the way.
            target = len(load.acked) + 2
            await eventually(lambda: len(load.acked) >= target, timeout=60)  # noqa: B023
            await asyncio.sleep(rng.uniform(0, 0.2))
            relay.kill()
            assert await relay.wait() == -signal.SIGKILL
            relay = RelayProcess(path)
            await relay.start()
        load.stop.set()
        await asyncio.gather(*loading)
        delivered, refused, totals = await settled_counts(sqlite_url, upstream, load.acked)
        assert delivered >= len(load.acked) >= 20
        assert refused >= len(load.acked)  # one for each message tried, acknowledged or not
        assert (totals["delivered"], totals["refused"]) == (delivered, refused)
        shown = await asyncio.to_thread(
            run_cli, "stats", "--json", "--account", "acme", "--config", str(path)
        )
        row = json.loads(shown.stdout)
        assert (row["delivered"], row["refused"]) == (delivered, refused)
        async with aiohttp.ClientSession() as http:
            port = yaml.safe_load(path.read_text())["web"]["listen"].rsplit(":", 1)[1]
            url = f"http://127.0.0.1:{port}/admin/dashboard"
            desk = {"Authorization": aiohttp.encode_basic_auth("desk", PASSWORD)}
            async with http.get(url, headers=desk) as page:
                html = await page.text()
        cells = re.findall(r'<td class="n">(\d+)</td>', html.split('id="account-acme"')[1])
        assert cells[:2] == [str(delivered), str(refused)]
    finally:
        load.stop.set()
        for task in loading:
            task.cancel()
        await asyncio.gather(*loading, return_exceptions=True)
        await relay.terminate()
        await upstream.stop()


class Load:
    """Sessions sending one message after another, each to two recipients, through restarts."""

    def __init__(self) -> None:
        self.acked: set[str] = set()  # the recipients of messages answered 250
        self.stop = asyncio.Event()
        self.sent = 0

    async def run(self, port: Callable[[], int]) -> None:
        while not self.stop.is_set():
            self.sent += 1
            first = f"r{self.sent}@example.net"
            try:
                client = await smtp_client(port(), login=LOGIN)
                refused, _ = await client.sendmail(
                    "news@acme.example", [first, "noreply@example.net"], simple_message()
                )
                assert list(refused) == ["noreply@example.net"]
                self.acked.add(first)
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                await asyncio.sleep(0.05)  # the relay is being restarted


async def settled_counts(
    url: str, upstream: TestUpstream, acked: set[str]
) -> tuple[int, int, dict[str, int]]:
    """Once every copy is delivered and recorded: the delivered and refused events, the stats.

    A copy whose recording a kill cut off is sent again (at least once), so delivered events
    may outnumber the messages; each of them is counted.
    """
    await eventually(lambda: acked <= {m.rcpt for m in upstream.messages}, timeout=60)
    store = open_store(url)
    await store.open()
    try:
        for _ in range(400):
            if not await store.queue(state="queued") and not await store.queue(state="active"):
                break
            await asyncio.sleep(0.05)
        events = await read_events(store, 1)
        totals = (await store.stats(since=0, account_id="acme"))["acme"]
    finally:
        await store.close()
    delivered = sum(e.type == "message.delivered" for e in events)
    refused = sum(e.type == "recipient.refused" for e in events)
    return delivered, refused, totals


async def test_a_crashed_relays_webhook_endpoint_is_taken_over_within_its_lease(
    tmp_path, sqlite_url, tls_files
):
    """SIGKILL while a webhook request is in flight: the next relay sends it within the lease.

    The lease was `4 x timeout + 60 s` and never renewed: after a crash nothing was sent for
    100 s. It is `webhooks.lease` now (15 s by default, here 4 s), renewed at each event.
    """

    class Stalling(Receiver):
        """Holds the first request (the relay dies meanwhile), answers the rest at once."""

        held = 0
        release = asyncio.Event()

        async def _hook(self, request: web.Request) -> web.Response:
            if not self.held:
                self.held += 1
                await self.release.wait()
                return web.Response(status=503)
            return await super()._hook(request)

    upstream = TestUpstream()
    await upstream.start()
    receiver = Stalling()
    await receiver.start()
    path = webhook_relay_config(
        tmp_path, sqlite_url, upstream, tls_files, receiver.port, timeout=3, lease=4
    )
    relay = RelayProcess(path)
    port = await relay.start()
    restarted = RelayProcess(path)
    try:
        client = await smtp_client(port, login=LOGIN)
        await client.sendmail("news@acme.example", ["r@example.net"], simple_message())
        await client.quit()
        await eventually(lambda: receiver.held == 1, timeout=30)  # in flight
        relay.kill()
        assert await relay.wait() == -signal.SIGKILL
        store = open_store(sqlite_url)
        await store.open()
        try:
            (state,) = await store.webhook_states()
        finally:
            await store.close()
        # The dead relay's lease runs out within `webhooks.lease` (it was 4 x 3 + 60 = 72 s).
        assert state.lease is not None
        assert state.lease_until <= time.time() + 4
        await restarted.start()
        await eventually(lambda: len(receiver.received) >= 1, timeout=60)
        assert receiver.events()[0]["type"] == "message.accepted"
    finally:
        for process in (relay, restarted):
            if process.proc and process.proc.returncode is None:
                await process.terminate()
        receiver.release.set()
        await receiver.stop()
        await upstream.stop()
