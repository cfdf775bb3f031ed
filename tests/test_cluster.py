"""One view of the cluster: `optin-relay status`, `/healthz?verbose` and the gauges.

Two relay processes on one PostgreSQL database, their upstream a server that takes connections
and never answers (so deliveries stay in flight and their leases held): `status` lists both,
what each holds, the queue and the webhooks' lag; a killed process is marked missing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from unittest.mock import ANY

import aiohttp
import yaml
from clirun import run_cli
from conftest import (
    PASSWORD,
    PASSWORD_HASH,
    RelayProcess,
    config_data,
    scrape,
    settles,
    simple_message,
    smtp_client,
)

from relay import __version__
from relay.cluster import MISSING_AFTER, read_status
from relay.config import parse_config
from relay.storage import open_store

LOGIN = ("acme-crm", PASSWORD)


class Silent:
    """Takes SMTP connections and never answers: a delivery to it stays in flight."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            del reader
            self.writers.append(writer)

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


async def endpoints(store) -> int:
    return len(await store.webhook_states())


async def send(port: int, count: int) -> None:
    client = await smtp_client(port, login=LOGIN)
    for n in range(count):
        await client.sendmail("news@acme.example", [f"r{port}-{n}@example.net"], simple_message())
    await client.quit()


async def test_status_shows_the_nodes_their_leases_the_queue_and_a_missing_node(
    tmp_path, pg_url, tls_files
):
    """Both processes, with pid, release and listeners, and the leases each holds.

    The leases add up to the recipients in flight; a SIGKILLed process is missing, a stopped
    one stopped.
    """
    silent = Silent()
    await silent.start()
    hook = {"url": "http://127.0.0.1:9/hook", "secret": "whsec_" + "A" * 32}
    data = config_data(
        store_url=pg_url,
        upstream_port=silent.port,
        tls_files=tls_files,
        upstream={"connections": 2},
        webhooks={"allow_private": True},
    )
    data["accounts"][0]["webhooks"] = [hook]
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    nodes = [RelayProcess(path), RelayProcess(path)]
    config = parse_config(data, base_dir=tmp_path)
    store = open_store(config.storage.url)
    await store.open()
    try:
        ports = [await node.start() for node in nodes]
        # A new endpoint starts at the end of the feed: let it exist before any mail comes.
        await settles(lambda: endpoints(store), 1, timeout=30)
        await asyncio.gather(*(send(port, 3) for port in ports))
        # every recipient leased and in flight: the silent upstream never lets one go
        await settles(lambda: store.queue_summary(time.time()), {"active": (6, ANY)}, timeout=30)
        # The feed shows an event once every transaction older than it has ended, on the whole
        # server (other tests' too): wait for all 6 message.accepted; port 9 takes none.
        (state,) = await store.webhook_states()
        await settles(lambda: store.events_behind("acme", state.cursor), (6, ANY), timeout=30)
        read = await asyncio.to_thread(run_cli, "status", "--json", "--config", str(path))
        status = json.loads(read.stdout)
        listed = {node["pid"]: node for node in status["nodes"]}
        assert set(listed) == {node.proc.pid for node in nodes}
        for node, port in zip(nodes, ports, strict=True):
            shown = listed[node.proc.pid]
            assert (shown["version"], shown["state"]) == (__version__, "running")
            assert f"smtp://127.0.0.1:{port}" in shown["listeners"]
            assert shown["id"] == node.events("relay_started")[0]["worker_id"]
        assert [(q["state"], q["recipients"]) for q in status["queue"]] == [("active", 6)]
        assert sum(node["leased_recipients"] for node in status["nodes"]) == 6
        (endpoint,) = status["webhooks"]
        assert endpoint["url"] == hook["url"]
        assert endpoint["behind"] == 6
        assert status["schema_pending"] == []
        text = await asyncio.to_thread(run_cli, "status", "--config", str(path))
        assert f"\t{nodes[0].proc.pid}\t{__version__}\t" in text.stdout

        nodes[1].proc.send_signal(signal.SIGKILL)
        await nodes[1].wait()
        await silent.stop()  # the deliveries in flight fail at once: a quick clean stop
        assert await nodes[0].terminate() == 0
        later = time.time() + MISSING_AFTER + 1
        seen = await read_status(store, config, await store.schema_state(), later)
        states = {node.pid: node.state for node in seen.nodes}
        assert states == {nodes[0].proc.pid: "stopped", nodes[1].proc.pid: "missing"}
    finally:
        await silent.stop()
        for node in nodes:
            await node.terminate()
        await store.close()


async def test_healthz_verbose_and_the_gauges_show_the_cluster(start_relay, sqlite_url, tls_files):
    """`/healthz?verbose` needs the admin token and shows this node; /metrics has the gauges."""
    data = config_data(store_url=sqlite_url, upstream_port=9, tls_files=tls_files)
    data["web"]["admin_token_hash"] = PASSWORD_HASH
    relay = await start_relay(data)
    url = f"http://127.0.0.1:{relay.web_port}/healthz"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as plain:
            assert (plain.status, await plain.json()) == (200, {"status": "ok"})
        async with http.get(url + "?verbose") as anonymous:
            assert anonymous.status == 401
        headers = {"Authorization": f"Bearer {PASSWORD}"}
        async with http.get(url + "?verbose", headers=headers) as verbose:
            assert verbose.status == 200
            body = await verbose.json()
    ((node,),) = [body["cluster"]["nodes"]]
    assert node["id"] == relay.delivery.worker_id
    assert node["state"] == "running"
    assert f"http://127.0.0.1:{relay.web_port}" in node["listeners"]
    await send(relay.smtp_ports[0], 2)
    samples = await scrape(relay.web_port)
    assert samples[("optin_relay_nodes", (("state", "running"),))] == 1
    queued = sum(
        value for (name, _), value in samples.items() if name == "optin_relay_queue_recipients"
    )
    assert queued == 2
    assert samples[("optin_relay_schema_pending_steps", ())] == 0
    expiry = samples[("optin_relay_tls_certificate_expiry_timestamp_seconds", ())]
    assert expiry > time.time()
