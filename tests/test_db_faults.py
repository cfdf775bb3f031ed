"""Database faults under load, on PostgreSQL clusters the tests start themselves.

For each fault: no accepted message is lost (every 250 is delivered), a 250 is never given
without a commit, the relay answers 4xx while the database cannot commit, and it recovers
without a restart. Each test prints how long recovery took (`recovered_seconds`; `pytest -rP`
shows it). The faults: the server crashes (`pg_ctl stop -m immediate`) and comes back; the
relay's connections are killed mid-transaction (`pg_terminate_backend`); a streaming standby is
promoted and the old primary stopped (a multi-host URL with target_session_attrs=read-write);
and PgBouncer in transaction pooling mode in front of it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable

import aiosmtplib
import pytest
from conftest import PASSWORD, TestUpstream, config_data, eventually, simple_message, smtp_client
from pgcluster import PgBouncer, PgCluster

from relay.clock import SystemClock

LOGIN = ("acme-crm", PASSWORD)
pytestmark = pytest.mark.slow


class Sender:
    """One message after another through the relay; what each got, and when."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted: list[tuple[str, float]] = []  # (recipient, when the 250 came)
        self.temporary: list[tuple[str, int, float]] = []  # 4xx: (recipient, code, when)
        self.permanent: list[tuple[str, int]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def until_accepted(self, more: int, timeout: float = 60) -> None:
        goal = len(self.accepted) + more
        await eventually(lambda: len(self.accepted) >= goal, timeout=timeout)

    def accepted_after(self, moment: float) -> float | None:
        return next((when for _, when in self.accepted if when >= moment), None)

    async def _run(self) -> None:
        n = 0
        client: aiosmtplib.SMTP | None = None
        while not self._stop.is_set():
            n += 1
            rcpt = f"m{n}@example.net"
            try:
                if client is None:
                    client = await smtp_client(self.port, login=LOGIN)
                await client.sendmail("news@acme.example", [rcpt], simple_message(body=f"#{n}"))
                self.accepted.append((rcpt, time.monotonic()))
            except aiosmtplib.SMTPResponseException as exc:
                if 400 <= exc.code < 500:
                    self.temporary.append((rcpt, exc.code, time.monotonic()))
                else:
                    self.permanent.append((rcpt, exc.code))
                with contextlib.suppress(aiosmtplib.SMTPException):
                    await client.rset()  # type: ignore[union-attr]
                await asyncio.sleep(0.05)
            except (aiosmtplib.SMTPException, OSError):
                client = None  # the session ended (a 421, a closed connection): a new one
                await asyncio.sleep(0.05)
        if client is not None:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.quit()


def report(**measured: object) -> None:
    """A measurement for the closing notes (`pytest -rP` shows it), never an assertion."""
    print("measured", json.dumps(measured, sort_keys=True))  # noqa: T201


def relay_data(url: str, upstream: TestUpstream, tls_files) -> dict:
    return config_data(
        store_url=url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        delivery={"poll_interval": 0.05, "lease": "5s", "retry_schedule": ["1s"]},
    )


async def all_delivered(sender: Sender, upstream: TestUpstream) -> Counter[str]:
    """Wait until every accepted message reached the upstream; the copies of each."""
    accepted = {rcpt for rcpt, _ in sender.accepted}
    await eventually(lambda: accepted <= {m.rcpt for m in upstream.messages}, timeout=90)
    return Counter(m.rcpt for m in upstream.messages)


@pytest.fixture
async def cluster():
    primary = await asyncio.to_thread(PgCluster.create)
    await asyncio.to_thread(primary.start)
    await asyncio.to_thread(primary.create_database)
    yield primary
    await asyncio.to_thread(primary.remove)


async def outage(sender: Sender, down: object, up: object) -> None:
    """Take the database away with `down()`, see 4xx, bring it back with `up()`, see 250."""
    await sender.until_accepted(30)
    failed_from = len(sender.temporary)
    await asyncio.to_thread(down)
    await eventually(lambda: len(sender.temporary) > failed_from, timeout=60)
    await asyncio.to_thread(up)
    back = time.monotonic()
    await eventually(lambda: sender.accepted_after(back) is not None, timeout=60)
    recovered = sender.accepted_after(back)
    assert recovered is not None
    report(recovered_seconds=round(recovered - back, 2))
    await sender.until_accepted(30)


def crash(cluster: PgCluster) -> Callable[[], None]:
    return lambda: cluster.stop("immediate")


async def fault(
    start_relay,
    url: str,
    upstream: TestUpstream,
    tls_files,
    *,
    down: Callable[[], None],
    up: Callable[[], None],
) -> None:
    """A relay on `url` under load through an outage (`down`, then `up`): nothing lost."""
    relay = await start_relay(relay_data(url, upstream, tls_files), clock=SystemClock())
    sender = Sender(relay.smtp_ports[0])
    sender.start()
    try:
        await outage(sender, down, up)
    finally:
        await sender.stop()
    copies = await all_delivered(sender, upstream)
    assert sender.permanent == []
    assert {code for _, code, _ in sender.temporary} <= {421, 451}
    report(accepted=len(sender.accepted))
    report(duplicates=sum(count - 1 for count in copies.values()))


async def test_the_database_crashes_under_load_and_comes_back(
    start_relay, cluster, tls_files, upstream
):
    """`pg_ctl stop -m immediate` mid-load: 4xx meanwhile, every 250 delivered afterwards."""
    await fault(
        start_relay, cluster.url(), upstream, tls_files, down=crash(cluster), up=cluster.start
    )


async def test_the_relays_connections_are_killed_mid_transaction(
    start_relay, cluster, tls_files, upstream
):
    """`pg_terminate_backend` on every relay connection, five times under load."""
    relay = await start_relay(relay_data(cluster.url(), upstream, tls_files), clock=SystemClock())
    sender = Sender(relay.smtp_ports[0])
    sender.start()
    kill = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = 'relay' AND pid <> pg_backend_pid()"
    )
    killed = 0
    try:
        for _ in range(5):
            await sender.until_accepted(20)
            killed += int(await asyncio.to_thread(cluster.sql, kill))
        await sender.until_accepted(20)
    finally:
        await sender.stop()
    copies = await all_delivered(sender, upstream)
    assert killed >= 5
    assert sender.permanent == []
    report(connections_killed=killed)
    report(temporary_failures=len(sender.temporary))
    report(duplicates=sum(count - 1 for count in copies.values()))


async def test_a_standby_is_promoted_and_the_relay_follows(
    start_relay, cluster, tls_files, upstream
):
    """Failover: the primary crashes, its synchronous standby is promoted; a multi-host URL.

    The standby is synchronous (`synchronous_standby_names`): with asynchronous replication a
    failover can lose what the primary had committed and not yet sent, 250s included.
    Deliveries in flight keep their leases (they are rows, replicated like the rest).
    """
    standby = await asyncio.to_thread(cluster.standby)
    try:
        await asyncio.to_thread(standby.start)
        await asyncio.to_thread(cluster.sql, "ALTER SYSTEM SET synchronous_standby_names = '*'")
        await asyncio.to_thread(cluster.sql, "SELECT pg_reload_conf()")
        await eventually_sync(cluster)
        url = (
            f"postgresql://postgres@127.0.0.1:{cluster.port},127.0.0.1:{standby.port}/relay"
            "?target_session_attrs=read-write"
        )
        # Until the standby is promoted no server takes writes: 451s, then the new primary.
        await fault(start_relay, url, upstream, tls_files, down=crash(cluster), up=standby.promote)
        assert standby.sql("SELECT pg_is_in_recovery()").strip() == "f"
    finally:
        await asyncio.to_thread(standby.remove)


async def eventually_sync(cluster: PgCluster) -> None:
    """Wait until the primary sees its standby as synchronous."""
    for _ in range(200):
        state = await asyncio.to_thread(
            cluster.sql, "SELECT sync_state FROM pg_stat_replication", "postgres"
        )
        if state.strip() == "sync":
            return
        await asyncio.sleep(0.05)
    msg = f"the standby never became synchronous: {state!r}"
    raise AssertionError(msg)


async def test_through_pgbouncer_in_transaction_mode(start_relay, cluster, tls_files, upstream):
    """PgBouncer (transaction pooling) in front: the relay works, and survives a crash behind it.

    `?pooler=pgbouncer`: no prepared statements are kept across transactions.
    """
    bouncer = PgBouncer(cluster, pool_size=5)
    await asyncio.to_thread(bouncer.start)
    try:
        url = bouncer.url() + "?pooler=pgbouncer"
        await fault(start_relay, url, upstream, tls_files, down=crash(cluster), up=cluster.start)
    except AssertionError:
        print(bouncer.log()[-3000:])  # noqa: T201 - what PgBouncer saw, beside the failure
        raise
    finally:
        await asyncio.to_thread(bouncer.stop)
