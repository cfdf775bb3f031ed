"""Backups: `optin-relay backup PATH` copies the SQLite store under load; the copy restores.

A relay accepts mail without pause (it does not deliver: the mail stays queued) while the
backup is taken; the copy, restored as a fresh store, holds the suppressions, opt-in records,
cases and every message accepted before the backup began, and a relay on it delivers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time

import aiosmtplib
import yaml
from clirun import run_cli
from conftest import (
    PASSWORD,
    TestUpstream,
    config_data,
    eventually,
    free_port,
    settles,
    simple_message,
    smtp_client,
)

from relay.storage import open_store
from relay.storage.records import Case, Consent, Suppression

LOGIN = ("acme-crm", PASSWORD)


async def seed(store, now: float) -> None:
    """A suppression, an opt-in record and a case: what a restore must bring back."""
    await store.suppress(
        Suppression("gone@example.net", "acme", "unsubscribe", "one_click", now), actor="test"
    )
    await store.record_consents(
        [Consent("acme", "fan@example.net", "news", "confirmed", now, now + 30, "form:signup")]
    )
    case = Case(
        "case1",
        "acme",
        "victim@example.net",
        "Q1",
        "Q1",
        "fbl",
        "abuse",
        b"report",
        "awaiting_proof",
        now,
        now + 86400 * 7,
        now,
    )
    assert await store.open_case(case)


class Load:
    """Messages sent one after another until stopped; the queue ids of those accepted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted: list[str] = []
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        client = await smtp_client(self.port, login=LOGIN)
        n = 0
        while not self._stop.is_set():
            n += 1
            _, reply = await client.sendmail(
                "news@acme.example", [f"reader{n}@example.net"], simple_message(body=f"#{n}")
            )
            self.accepted.append(reply.rsplit(" ", 1)[1])
        with contextlib.suppress(aiosmtplib.SMTPException):
            await client.quit()

    async def stop(self) -> None:
        self._stop.set()
        await self._task


async def check_restored(url: str, before: list[str]) -> set[str]:
    """The restored store holds what was seeded and the mail accepted before the backup.

    Returns the recipients it has pending.
    """
    store = open_store(url)
    await store.open()
    try:
        assert (await store.schema_state()).pending == []
        assert await store.suppressed("gone@example.net", "acme")
        assert await store.consent("acme", "fan@example.net") is not None
        assert (await store.case("case1")) is not None
        for queue_id in before:
            queued = await store.queued_message(queue_id)
            assert queued is not None, queue_id
            assert [r.status for r in queued.recipients] == ["pending"]
        kept = {entry.recipient for entry in await store.queue(limit=100_000, now=time.time())}
        assert len(kept) == (await store.counts()).get("pending", 0)
    finally:
        await store.close()
    assert len(kept) >= len(before)
    return kept


async def test_a_backup_taken_under_load_restores_everything_committed_before_it(
    start_relay, tmp_path, tls_files
):
    """Suppressions, opt-in records, cases and queued mail are all in the restored copy."""
    live = tmp_path / "live"
    live.mkdir()
    data = config_data(
        store_url=f"sqlite:///{live}/relay.db", upstream_port=free_port(), tls_files=tls_files
    )
    data["delivery"] = {"enabled": False}  # the mail stays queued, untouched
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    relay = await start_relay(data)
    await seed(relay.store, relay.clock.now())
    load = Load(relay.smtp_ports[0])
    await eventually(lambda: len(load.accepted) >= 20)
    before = list(load.accepted)
    target = tmp_path / "backup.db"
    result = await asyncio.to_thread(run_cli, "backup", str(target), "--config", str(path))
    during = len(load.accepted) - len(before)
    await load.stop()
    assert during > 0  # the relay went on accepting while the copy was taken
    assert result.stdout.startswith(f"backed up to {target}: ")
    again = await asyncio.to_thread(
        run_cli, "backup", str(target), "--config", str(path), check=False
    )
    assert again.returncode == 1
    assert "never overwrites" in again.stderr

    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(target, restored / "relay.db")
    kept = await check_restored(f"sqlite:///{restored}/relay.db", before)

    upstream = TestUpstream()
    await upstream.start()
    try:
        data["storage"]["url"] = f"sqlite:///{restored}/relay.db"
        data["upstream"]["port"] = upstream.port
        data["delivery"] = {}
        await start_relay(data)

        async def delivered() -> set[str]:
            return {m.rcpt for m in upstream.messages}

        await settles(delivered, kept, timeout=30)
        assert len(upstream.messages) == len(kept)  # each once
        assert {f"reader{n}@example.net" for n in range(1, len(before) + 1)} <= kept
    finally:
        await upstream.stop()


async def test_postgresql_is_backed_up_with_its_own_tools(tmp_path, pg_url, tls_files):
    """`backup` on a PostgreSQL store refuses and says what to use instead."""
    data = config_data(store_url=pg_url, upstream_port=free_port(), tls_files=tls_files)
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    result = await asyncio.to_thread(
        run_cli, "backup", str(tmp_path / "copy.db"), "--config", str(path), check=False
    )
    assert result.returncode == 1
    assert "pg_dump" in result.stderr
    assert not (tmp_path / "copy.db").exists()
