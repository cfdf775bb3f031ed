"""Upgrades: which release may run on which schema, `migrate [--check]`, and a rolling upgrade.

The last test runs the previous release (its code taken from its commit with `git archive`)
and this one as two nodes on one PostgreSQL database under load, then upgrades the old node.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sqlite3
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import aiosmtplib
import asyncpg
import pytest
import yaml
from clirun import run_cli
from conftest import (
    PASSWORD,
    ROOT,
    RelayProcess,
    TestUpstream,
    config_data,
    eventually,
    settles,
    simple_message,
    smtp_client,
)

from relay import __version__
from relay.config import parse_config
from relay.errors import SchemaError
from relay.storage import open_store
from relay.storage.migrations import POSTGRES, SQLITE
from relay.storage.schema import MIN_VERSION, prepare, version_key

LOGIN = ("acme-crm", PASSWORD)
# The previous release: 0.1.0, the last commit before the schema recorded its floor.
PREVIOUS = ("0.1.0", "4a9210e")


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def set_floor(url: str, version: str) -> None:
    """Record in the schema that it needs `version` (as a newer release's migration would)."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db, db:
            db.execute("UPDATE schema_info SET value = ? WHERE key = ?", (version, MIN_VERSION))
        return
    base, schema = url.split("?schema=")
    con = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        await con.execute("UPDATE schema_info SET value = $1 WHERE key = $2", version, MIN_VERSION)
    finally:
        await con.close()


def migrate_cli(path: Path, *args: str):
    return run_cli("migrate", *args, "--config", str(path), check=False)


async def test_migrate_check_lists_the_steps_then_migrate_applies_them(
    tmp_path, store_url, tls_files
):
    """`--check` exits 1 with the pending steps; `migrate` applies them once; then exit 0."""
    data = config_data(store_url=store_url, upstream_port=1, tls_files=tls_files)
    path = write(tmp_path, "relay", data)
    steps = SQLITE if store_url.startswith("sqlite") else POSTGRES
    pending = await asyncio.to_thread(migrate_cli, path, "--check")
    assert pending.returncode == 1
    assert pending.stdout.splitlines()[0] == (
        f"{len(steps)} steps pending for optin-relay {__version__}:"
    )
    assert " 17  messages.dsn, recipients.dsn" in pending.stdout
    applied = await asyncio.to_thread(migrate_cli, path)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith(f"applied {len(steps)} steps:")
    current = await asyncio.to_thread(migrate_cli, path, "--check")
    assert (current.returncode, current.stdout.strip()) == (
        0,
        f"schema current: {len(steps)} steps, for optin-relay {__version__}",
    )
    store = open_store(parse_config(data).storage.url)
    await store.open()
    try:
        state = await store.schema_state()
        assert state.pending == []
        assert state.min_version == "0.1.0"
    finally:
        await store.close()


async def test_a_release_older_than_the_schema_refuses_to_start(
    tmp_path, store_url, tls_files, start_relay
):
    """A schema that needs a newer release: serve exits 78 naming it; the data is untouched."""
    data = config_data(store_url=store_url, upstream_port=1, tls_files=tls_files)
    path = write(tmp_path, "relay", data)
    assert (await asyncio.to_thread(migrate_cli, path)).returncode == 0
    await set_floor(parse_config(data).storage.url, "99.1.0")
    with pytest.raises(SchemaError, match=r"install 99\.1\.0 or later"):
        await start_relay(data)
    node = RelayProcess(path)
    with pytest.raises(AssertionError, match="did not start"):
        await node.start(timeout=20)
    assert await node.wait() == 78
    (refused,) = node.events("schema_refused")
    assert f"needs optin-relay 99.1.0 or later (this is {__version__})" in refused["error"]
    checked = await asyncio.to_thread(migrate_cli, path, "--check")
    assert checked.returncode == 1
    assert "install 99.1.0 or later" in checked.stderr
    listed = run_cli("stats", "--config", str(path), check=False)
    assert listed.returncode == 1
    assert "install 99.1.0 or later" in listed.stderr


async def test_never_refuses_to_start_until_the_schema_is_migrated(
    tmp_path, sqlite_url, tls_files, start_relay
):
    """`storage.migrate: never` on an unmigrated store: no start, a clear word; after, it runs."""
    data = config_data(store_url=sqlite_url, upstream_port=1, tls_files=tls_files)
    data["storage"]["migrate"] = "never"
    path = write(tmp_path, "relay", data)
    with pytest.raises(SchemaError, match="run `optin-relay migrate` once"):
        await start_relay(data)
    assert (await asyncio.to_thread(migrate_cli, path)).returncode == 0
    relay = await start_relay(data)
    assert (await relay.store.schema_state()).pending == []


async def test_nodes_starting_together_apply_each_step_once(pg_url):
    """Eight stores migrating one fresh schema at once: all start, each step applied once."""
    stores = [open_store(pg_url) for _ in range(8)]
    for store in stores:
        await store.open()
    try:
        states = await asyncio.gather(*(prepare(store, "auto") for store in stores))
        assert {len(state.applied) for state in states} == {len(POSTGRES)}
        query = "SELECT version, count(*) FROM schema_migrations GROUP BY 1"
        rows = await stores[0]._fetch(query)
        assert sorted(rows) == sorted((version, 1) for version, _ in POSTGRES)
    finally:
        for store in stores:
            await store.close()


def test_version_keys_order_releases():
    """Releases compare by their numbers, not as text."""
    assert version_key("0.10.0") > version_key("0.9.3")
    assert version_key("1.0.0rc1") == (1, 0, 0)
    assert version_key(__version__) >= version_key(PREVIOUS[0])


def previous_release(into: Path) -> Path:
    """The previous release's source tree, from its commit (the clone's history has it)."""
    version, commit = PREVIOUS
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "relay"],
        capture_output=True,
        check=False,
    )
    assert archive.returncode == 0, (
        f"release {version} is commit {commit}, which this clone lacks (a shallow clone?):"
        f" {archive.stderr.decode(errors='replace')}"
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


async def offers_dsn(port: int) -> bool:
    """Whether the node on `port` offers the DSN extension (this release does, 0.1.0 did not)."""
    client = await smtp_client(port, login=LOGIN)
    try:
        return client.supports_extension("dsn")
    finally:
        await client.quit()


class Load:
    """Messages sent without pause to the nodes that are up; what got 250 is remembered."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.accepted: list[str] = []  # recipients of messages that got 250
        self.count = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def until(self, more: int) -> None:
        """Return once `more` messages more have been accepted."""
        goal = len(self.accepted) + more
        await eventually(lambda: len(self.accepted) >= goal, timeout=60)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            for port in list(self.ports):
                self.count += 1
                rcpt = f"user{self.count}@example.net"
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    client = await smtp_client(port, login=LOGIN)
                    try:
                        await client.sendmail("news@acme.example", [rcpt], simple_message())
                        self.accepted.append(rcpt)
                    finally:
                        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                            await client.quit()
            await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_the_previous_release_and_this_one_deliver_through_a_rolling_upgrade(
    tmp_path, pg_url, tls_files
):
    """The schema is migrated under the old node, the new one joins, the old one is upgraded.

    Under load throughout: every accepted message is delivered once, and each node delivers in
    each phase.
    """
    old_tree = previous_release(tmp_path / "previous")
    upstream = TestUpstream()
    await upstream.start()
    common = {
        "store_url": pg_url,
        "upstream_port": upstream.port,
        "tls_files": tls_files,
        "upstream": {"connections": 2},
        "delivery": {"poll_interval": 0.05, "batch": 10},
    }
    old_path = write(tmp_path, "old", config_data(**common))
    new_data = config_data(**common)
    new_data["storage"]["migrate"] = "never"
    new_path = write(tmp_path, "new", new_data)
    old = RelayProcess(old_path, cwd=old_tree, env={**os.environ, "PYTHONPATH": str(old_tree)})
    load = Load()
    nodes = [old]
    try:
        load.ports.append(await old.start())
        assert "version" not in old.events("relay_started")[0]  # the previous release's code
        assert not await offers_dsn(old.smtp_port)
        load.start()
        await load.until(20)
        new = await migrate_and_join(load, old, new_path)
        nodes.append(new)
        upgraded = await upgrade(load, old, new_path)
        nodes.append(upgraded)
        await load.stop()
        await eventually(lambda: len(upstream.messages) >= len(load.accepted), timeout=60)
        await asyncio.sleep(1.0)  # anything delivered twice would show up now
        copies = Counter(m.rcpt for m in upstream.messages)
        assert set(copies) == set(load.accepted)
        assert set(copies.values()) == {1}
    finally:
        await load.stop()
        for node in nodes:
            await node.terminate()
        await upstream.stop()


async def migrate_and_join(load: Load, old: RelayProcess, new_path: Path) -> RelayProcess:
    """The schema migrated under the running old node; then a node of this release joins."""
    checked = await asyncio.to_thread(migrate_cli, new_path, "--check")
    assert checked.returncode == 1
    assert " 18  schema_info" in checked.stdout
    assert (await asyncio.to_thread(migrate_cli, new_path)).returncode == 0
    delivered_by_old = len(old.events("delivery_succeeded"))
    await load.until(20)
    new = RelayProcess(new_path)
    load.ports.append(await new.start())
    assert new.events("relay_started")[0]["version"] == __version__
    assert await offers_dsn(new.smtp_port)
    await load.until(40)
    await eventually(lambda: new.events("delivery_succeeded"), timeout=30)
    await eventually(lambda: len(old.events("delivery_succeeded")) > delivered_by_old)
    return new


async def upgrade(load: Load, old: RelayProcess, new_path: Path) -> RelayProcess:
    """The old node stopped gracefully and started again on this release."""
    load.ports.remove(old.smtp_port)
    assert await old.terminate() == 0
    upgraded = RelayProcess(new_path)
    load.ports.append(await upgraded.start())
    await load.until(40)
    await eventually(lambda: upgraded.events("delivery_succeeded"), timeout=30)
    return upgraded


async def test_a_migration_under_load_waits_its_turn_and_never_deadlocks(pg_url, log_lines):
    """A step that locks two tables, while a transaction holds one and then wants the other.

    That is a delivery (recipients, then messages) meeting `ALTER TABLE messages, recipients`:
    PostgreSQL's deadlock detector aborted the migration (seen in the rolling-upgrade test).
    Now the migration gives its locks up after 500 ms, lets the delivery finish and tries again.
    """
    store = open_store(pg_url)
    await store.open()
    base, schema = pg_url.split("?schema=")
    delivery = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        await store.migrate()
        # step 17 pending again: its two columns gone
        await delivery.execute(
            "ALTER TABLE messages DROP COLUMN dsn; ALTER TABLE recipients DROP COLUMN dsn;"
            " DELETE FROM schema_migrations WHERE version = 17"
        )
        transaction = delivery.transaction()
        await transaction.start()
        await delivery.execute("UPDATE recipients SET attempts = attempts WHERE id = 0")
        migrating = asyncio.create_task(store.migrate())
        await asyncio.sleep(0.2)  # the migration holds messages and waits for recipients
        await delivery.execute("UPDATE messages SET size = size WHERE id = ''")
        await transaction.commit()  # the delivery finished: nobody was aborted
        await asyncio.wait_for(migrating, 30)
        assert 17 in (await store.schema_state()).applied
        assert [e["attempt"] for e in log_lines() if e["event"] == "migration_retry"]
    finally:
        await delivery.close()
        await store.close()


async def _step_22_pending(con: asyncpg.Connection) -> None:
    """The schema as the release before step 22 left it."""
    await con.execute(
        "DROP INDEX recipients_pending; CREATE INDEX recipients_due ON recipients"
        " (status, next_attempt); DELETE FROM schema_migrations WHERE version = 22"
    )


async def _index_valid(con: asyncpg.Connection, name: str) -> bool | None:
    return await con.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", name
    )


async def test_an_index_is_built_concurrently_while_the_spool_takes_writes(pg_url):
    """Step 22 builds its index CONCURRENTLY, outside the migration's transaction.

    A delivery's transaction is open on recipients, so the build waits for it; meanwhile a
    message is spooled. A plain CREATE INDEX would have queued every write behind it (the
    spool's INSERT waits for its lock: `lock_timeout` says so), and the runner could not run
    the step at all before (CREATE INDEX CONCURRENTLY cannot run in a transaction block).
    """
    store = open_store(pg_url)
    await store.open()
    base, schema = pg_url.split("?schema=")
    delivery = await asyncpg.connect(base, server_settings={"search_path": schema})
    writer = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        await store.migrate()
        await _step_22_pending(delivery)
        transaction = delivery.transaction()
        await transaction.start()
        await delivery.execute("UPDATE recipients SET attempts = attempts WHERE id = 0")
        migrating = asyncio.create_task(store.migrate())

        async def building() -> str | None:
            phase: str | None = await writer.fetchval(
                "SELECT phase FROM pg_stat_progress_create_index"
                " WHERE relid = 'recipients'::regclass"
            )
            return phase

        # the build waits for the delivery's transaction to end
        await settles(building, "waiting for writers before build", timeout=30)
        await writer.execute("SET lock_timeout = '5s'")
        await writer.execute(
            "INSERT INTO messages (id, account_id, mail_from, content, size, received_at)"
            " VALUES ('during', 'acme', 'news@acme.example', 'x', 1, 0);"
            " INSERT INTO recipients (message_id, rcpt, next_attempt, updated_at)"
            " VALUES ('during', 'r@example.net', 0, 0)"
        )
        assert not migrating.done()  # written while the index was being built
        await transaction.commit()
        await asyncio.wait_for(migrating, 60)
        assert 22 in (await store.schema_state()).applied
        assert await _index_valid(writer, "recipients_pending") is True
        assert await _index_valid(writer, "recipients_due") is None  # dropped
        (job,) = await store.claim(lease="t:1", now=1.0, lease_until=61.0, limit=10)
        assert job.message_id == "during"
    finally:
        await delivery.close()
        await writer.close()
        await store.close()


async def test_an_index_build_that_failed_is_built_again(pg_url):
    """A build cancelled half-way leaves an invalid index; the step, run again, replaces it."""
    store = open_store(pg_url)
    await store.open()
    base, schema = pg_url.split("?schema=")
    con = await asyncpg.connect(base, server_settings={"search_path": schema})
    builder = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        await store.migrate()
        await _step_22_pending(con)
        transaction = con.transaction()
        await transaction.start()
        await con.execute("UPDATE recipients SET attempts = attempts WHERE id = 0")
        build = asyncio.create_task(
            builder.execute(
                "CREATE INDEX CONCURRENTLY recipients_pending ON recipients (next_attempt)"
                " WHERE status = 'pending'"
            )
        )
        watcher = await asyncpg.connect(base, server_settings={"search_path": schema})
        try:
            # past its first transaction (the invalid index is in the catalog), waiting for
            # the open one to end
            await settles(
                lambda: watcher.fetchval(
                    "SELECT phase FROM pg_stat_progress_create_index WHERE pid = $1",
                    builder.get_server_pid(),
                ),
                "waiting for writers before build",
                timeout=30,
            )
            await watcher.execute("SELECT pg_cancel_backend($1)", builder.get_server_pid())
            with pytest.raises(asyncpg.QueryCanceledError):
                await build
            await transaction.rollback()
            assert await _index_valid(watcher, "recipients_pending") is False
            await store.migrate()
            assert await _index_valid(watcher, "recipients_pending") is True
        finally:
            await watcher.close()
    finally:
        await con.close()
        await builder.close()
        await store.close()
