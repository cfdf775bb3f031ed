"""The storage interface, run against both backends (SQLite file, local PostgreSQL)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from relay.errors import StoreError
from relay.storage import NewMessage, open_store
from relay.storage.records import new_message_id

NOW = 1_800_000_000.0


def message(recipients=("a@example.net",), *, content=b"Subject: x\r\n\r\nbody\r\n", at=NOW):
    return NewMessage(
        id=new_message_id(),
        account_id="acme",
        mail_from="news@acme.example",
        recipients=tuple(recipients),
        content=content,
        received_at=at,
    )


async def test_migrate_is_idempotent(store):
    """Running the migrations again changes nothing and does not fail."""
    await store.migrate()
    await store.migrate()
    await store.spool(message())
    assert await store.counts() == {"pending": 1}


async def test_spool_then_claim(store):
    """A spooled message's recipients are claimable at once, with their envelope."""
    msg = message(["a@example.net", "b@example.net"])
    await store.spool(msg)
    jobs = await store.claim(lease="w1:1", now=NOW, lease_until=NOW + 60, limit=10)
    assert sorted(j.recipient for j in jobs) == ["a@example.net", "b@example.net"]
    job = jobs[0]
    assert (job.message_id, job.mail_from, job.account_id, job.kind) == (
        msg.id,
        "news@acme.example",
        "acme",
        "message",
    )
    assert job.attempts == 0
    assert job.received_at == NOW
    assert await store.content(msg.id) == msg.content


async def test_leased_recipient_not_claimed_twice_until_lease_expires(store):
    """A lease keeps others away until it runs out; then the recipient is claimable again."""
    await store.spool(message())
    first = await store.claim(lease="w1:1", now=NOW, lease_until=NOW + 60, limit=10)
    assert len(first) == 1
    assert await store.claim(lease="w2:1", now=NOW + 59, lease_until=NOW + 120, limit=10) == []
    again = await store.claim(lease="w2:2", now=NOW + 61, lease_until=NOW + 120, limit=10)
    assert [j.recipient_id for j in again] == [first[0].recipient_id]
    # The first worker lost its lease: its late outcome is not recorded.
    assert await store.delivered(first[0], reply="250 ok", now=NOW + 62) is False
    assert await store.delivered(again[0], reply="250 ok", now=NOW + 62) is True
    assert await store.counts() == {"delivered": 1}


async def test_renew_extends_lease(store):
    """A renewed lease is not taken by another worker after its original end."""
    await store.spool(message())
    jobs = await store.claim(lease="w1:1", now=NOW, lease_until=NOW + 60, limit=10)
    assert await store.renew("w1:1", lease_until=NOW + 200) == 1
    assert await store.claim(lease="w2:1", now=NOW + 100, lease_until=NOW + 160, limit=10) == []
    assert await store.delivered(jobs[0], reply="250 ok", now=NOW + 150) is True


async def test_release_returns_leases(store):
    """A graceful stop gives leases back at once."""
    await store.spool(message(["a@example.net", "b@example.net"]))
    await store.claim(lease="w1:1", now=NOW, lease_until=NOW + 600, limit=10)
    assert await store.release("w1:") == 2
    assert len(await store.claim(lease="w2:1", now=NOW, lease_until=NOW + 60, limit=10)) == 2


async def test_deferred_waits_for_next_attempt(store):
    """A deferred recipient counts the attempt and is not due before its next try."""
    await store.spool(message())
    (job,) = await store.claim(lease="w1:1", now=NOW, lease_until=NOW + 60, limit=10)
    assert await store.deferred(job, reply="451 later", now=NOW, next_attempt=NOW + 300)
    assert await store.claim(lease="w1:2", now=NOW + 299, lease_until=NOW + 400, limit=10) == []
    (retry,) = await store.claim(lease="w1:3", now=NOW + 300, lease_until=NOW + 400, limit=10)
    assert retry.attempts == 1
    (entry,) = await store.queue()
    assert (entry.attempts, entry.last_reply, entry.next_attempt) == (1, "451 later", NOW + 300)


async def test_content_dropped_only_when_every_recipient_is_done(store):
    """Per-recipient state: the content stays until the last recipient is delivered or failed."""
    msg = message(["a@example.net", "b@example.net"])
    await store.spool(msg)
    first, second = await store.claim(lease="w1:1", now=NOW, lease_until=NOW + 60, limit=10)
    assert await store.failed(first, reply="550 no", now=NOW, dsn=None)
    assert await store.content(msg.id) == msg.content
    assert await store.delivered(second, reply="250 ok", now=NOW)
    with pytest.raises(StoreError):
        await store.content(msg.id)
    assert await store.counts() == {"delivered": 1, "failed": 1}


async def test_failed_spools_dsn_in_same_transaction(store):
    """Failing a recipient and spooling its DSN happen together."""
    await store.spool(message())
    (job,) = await store.claim(lease="w1:1", now=NOW, lease_until=NOW + 60, limit=10)
    dsn = NewMessage(
        id=new_message_id(),
        account_id="acme",
        mail_from="",
        recipients=("news@acme.example",),
        content=b"DSN",
        received_at=NOW,
        kind="dsn",
    )
    assert await store.failed(job, reply="550 no", now=NOW, dsn=dsn)
    (dsn_job,) = await store.claim(lease="w1:2", now=NOW, lease_until=NOW + 60, limit=10)
    assert (dsn_job.kind, dsn_job.mail_from, dsn_job.recipient) == ("dsn", "", "news@acme.example")
    # A second outcome for the same job (a stale worker) spools nothing.
    assert not await store.failed(job, reply="550 no", now=NOW, dsn=dsn)


async def test_concurrent_claims_are_disjoint(store_url):
    """Two stores (two processes' pools) claiming at once never take the same recipient."""
    stores = [open_store(store_url) for _ in range(32)]
    for s in stores:
        await s.open()
        await s.migrate()
    try:
        for n in range(10):
            await stores[0].spool(message([f"r{n}-{i}@example.net" for i in range(20)]))

        async def drain(s, name):
            taken = []
            for round_ in range(100):
                jobs = await s.claim(
                    lease=f"{name}:{round_}", now=NOW, lease_until=NOW + 60, limit=7
                )
                if not jobs:
                    return taken
                taken.extend(j.recipient_id for j in jobs)
                await asyncio.sleep(0)
            return taken

        a, b = await asyncio.gather(drain(stores[0], "a"), drain(stores[1], "b"))
        assert not set(a) & set(b)
        assert len(a) + len(b) == 200
    finally:
        for s in stores:
            await s.close()


async def test_reads_see_every_commit_under_concurrent_reads(store):
    """Content claimed after its commit is readable at once, while spools and reads overlap.

    Regression: on SQLite, cursors of concurrent readers interleaved on the one read connection
    kept a read transaction open, so a claimed message's content was not found (its recipient
    then waited a whole lease).
    """
    total, missing, done = 1500, 0, 0

    async def produce() -> None:
        for _ in range(total // 10):
            await asyncio.gather(*(store.spool(message()) for _ in range(10)))
            await asyncio.sleep(0)

    async def deliver(job) -> None:
        nonlocal missing, done
        try:
            await store.content(job.message_id)
        except StoreError:
            missing += 1
        await store.delivered(job, reply="250 ok", now=NOW + 2)
        done += 1

    async def consume() -> None:
        tasks: set[asyncio.Task[None]] = set()
        claims = 0
        while done < total:
            claims += 1
            jobs = await store.claim(
                lease=f"w:{claims}", now=NOW + 1, lease_until=NOW + 60, limit=16
            )
            for job in jobs:
                task = asyncio.create_task(deliver(job))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if len(jobs) < 16:
                await asyncio.sleep(0.005)

    await asyncio.wait_for(asyncio.gather(produce(), consume()), 60)
    assert missing == 0


async def test_store_errors_are_translated(tmp_path):
    """A backend failure surfaces as StoreError, never a driver exception."""
    bad = open_store("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError):
        await bad.open()
    (tmp_path / "dir.db").mkdir()
    also_bad = open_store(f"sqlite:///{tmp_path}/dir.db")
    with pytest.raises(StoreError):
        await also_bad.open()


def entry(address, scope="acme", reason="unsubscribe", source="test", at=NOW):
    from relay.storage.records import Suppression

    return Suppression(address, scope, reason, source, at)


async def test_suppression_is_case_insensitive_and_scoped(store):
    """An account's suppression stops that account only; a global one stops every account."""
    assert await store.suppress(entry("Alice@Example.NET"), actor="test")
    assert not await store.suppress(entry("alice@example.net"), actor="test")  # already there
    found = await store.suppressed("ALICE@example.net", "acme")
    assert found is not None
    assert (found.address, found.scope, found.reason) == (
        "alice@example.net",
        "acme",
        "unsubscribe",
    )
    assert await store.suppressed("alice@example.net", "globex") is None
    await store.suppress(entry("bob@example.net", scope="*", reason="complaint"), actor="test")
    assert (await store.suppressed("bob@example.net", "globex")).scope == "*"


async def test_account_scope_wins_over_global(store):
    """With both, the account's own suppression is the one reported."""
    await store.suppress(entry("c@example.net", scope="*", reason="bounce"), actor="t")
    await store.suppress(entry("c@example.net", reason="unsubscribe"), actor="t")
    assert (await store.suppressed("c@example.net", "acme")).reason == "unsubscribe"


async def test_unsuppress_needs_reason_and_is_audited(store):
    """Removing leaves an audit record with actor and reason; removing nothing is False."""
    await store.suppress(entry("d@example.net"), actor="cli:root")
    assert await store.unsuppress(
        "D@example.net", "acme", reason="re-subscribed by form", actor="cli:root", now=NOW + 5
    )
    assert await store.suppressed("d@example.net", "acme") is None
    assert not await store.unsuppress("d@example.net", "acme", reason="x", actor="y", now=NOW)
    history = await store.audit("d@example.net")
    assert [(a.action, a.reason, a.actor) for a in history] == [
        ("add", "unsubscribe", "cli:root"),
        ("remove", "re-subscribed by form", "cli:root"),
    ]


async def test_bulk_import_and_paging(store):
    """Imports count only new rows; pages walk every row once in order."""
    batch = [entry(f"user{n:04d}@example.net", reason="import") for n in range(2500)]
    assert await store.suppress_many(batch) == 2500
    assert await store.suppress_many([*batch[:10], entry("new@example.net")]) == 1
    seen, after = [], ("", "")
    while page := await store.suppressions(scope="acme", after=after, limit=1000):
        seen.extend(s.address for s in page)
        after = (page[-1].address, page[-1].scope)
    assert len(seen) == 2501
    assert seen == sorted(seen)


async def test_campaign_window(store):
    """Recipients per campaign are summed over the sliding window (kept per minute)."""
    day = 86400
    assert await store.record_campaign("acme", "c1", 60, now=NOW, window=day) == 60
    assert await store.record_campaign("acme", "c1", 30, now=NOW + 10, window=day) == 90
    assert await store.record_campaign("acme", "c2", 5, now=NOW + 20, window=day) == 5
    # A minute leaves once wholly outside the window: still counted at +1 day +5 s ...
    assert await store.record_campaign("acme", "c1", 20, now=NOW + day + 5, window=day) == 110
    # ... gone at +1 day +61 s.
    assert await store.record_campaign("acme", "c1", 5, now=NOW + day + 61, window=day) == 25


async def test_every_accounts_state_and_recent_changes_in_one_query_each(store):
    """The current state of every changed account, and every account's changes since a time.

    What the dashboard shows for all accounts at once (one query each, not two per account).
    """
    assert await store.account_states() == {}
    changes = [
        ("acme", "suspended", NOW),
        ("globex", "suspended", NOW + 10),
        ("acme", "active", NOW + 20),
        ("initech", "terminated", NOW + 30),
    ]
    for account_id, state, at in changes:
        await store.set_account_state(
            account_id, state, reason=f"{state} at {at}", actor="policy:test", now=at
        )
    states = await store.account_states()
    assert {key: (s.state, s.at) for key, s in states.items()} == {
        "acme": ("active", NOW + 20),
        "globex": ("suspended", NOW + 10),
        "initech": ("terminated", NOW + 30),
    }
    assert states["acme"] == await store.account_state("acme")
    recent = await store.account_changes(since=NOW + 10)
    assert [(c.account_id, c.state, c.at) for c in recent] == [
        ("globex", "suspended", NOW + 10),
        ("acme", "active", NOW + 20),
        ("initech", "terminated", NOW + 30),
    ]
    assert recent[0].reason == f"suspended at {NOW + 10}"
    assert recent[0].actor == "policy:test"
    assert await store.account_changes(since=NOW + 31) == []


async def test_account_flags(store):
    """A flag is set once and then reported."""
    assert not await store.has_flag("acme", "mandatory_unsubscribe")
    assert await store.set_flag("acme", "mandatory_unsubscribe", reason="r", now=NOW)
    assert not await store.set_flag("acme", "mandatory_unsubscribe", reason="r", now=NOW)
    assert await store.has_flag("acme", "mandatory_unsubscribe")
    assert not await store.has_flag("globex", "mandatory_unsubscribe")


async def test_campaign_travels_with_the_message(store):
    """The campaign key given at spool time comes back with each claimed recipient."""
    msg = NewMessage(
        id=new_message_id(),
        account_id="acme",
        mail_from="news@acme.example",
        recipients=("a@example.net",),
        content=b"x",
        received_at=NOW,
        campaign="list:news",
    )
    await store.spool(msg)
    (job,) = await store.claim(lease="w:1", now=NOW, lease_until=NOW + 60, limit=5)
    assert job.campaign == "list:news"


async def test_consent_records(store):
    """Opt-in records upsert, match case-insensitively, and withdrawn ones do not count."""
    from relay.storage.records import Consent

    record = Consent(
        "acme",
        "Alice@Example.net",
        "news",
        "confirmed",
        NOW,
        NOW + 60,
        "form:signup",
        "192.0.2.1",
        "UA/1",
        "v3",
    )
    assert await store.record_consents([record]) == 1
    found = await store.consent("acme", "alice@EXAMPLE.net")
    assert (found.address, found.method, found.ip, found.consent_text_version) == (
        "alice@example.net",
        "confirmed",
        "192.0.2.1",
        "v3",
    )
    assert await store.consent("globex", "alice@example.net") is None
    withdrawn = Consent(
        "acme",
        "alice@example.net",
        "news",
        "confirmed",
        NOW,
        NOW + 60,
        "form:signup",
        withdrawn_at=NOW + 90,
    )
    await store.record_consents([withdrawn])
    assert await store.consent("acme", "alice@example.net") is None
    assert len(await store.consents(account_id="acme", address="alice@example.net")) == 1


async def test_window_take_limit_and_distinct(store):
    """A sliding window counts events (or distinct items) and refuses past a limit."""
    for n in range(3):
        assert await store.window_take(
            "acme", "rcpt", f"r{n}", now=NOW + n, window=60, limit=3
        ) == (True, n + 1)
    assert await store.window_take("acme", "rcpt", "r9", now=NOW + 5, window=60, limit=3) == (
        False,
        3,
    )
    # Counts are kept per minute, and a minute leaves once wholly outside the window.
    assert await store.window_take("acme", "rcpt", "r9", now=NOW + 61, window=60, limit=3) == (
        False,
        3,
    )
    assert await store.window_take("acme", "rcpt", "r9", now=NOW + 121, window=60, limit=3) == (
        True,
        1,
    )
    assert await store.window_take("acme", "nc", "a", now=NOW, window=60, distinct=True) == (
        True,
        1,
    )
    assert await store.window_take("acme", "nc", "a", now=NOW + 1, window=60, distinct=True) == (
        True,
        1,
    )
    assert await store.window_take("acme", "nc", "b", now=NOW + 2, window=60, distinct=True) == (
        True,
        2,
    )
    assert await store.window_take("globex", "nc", "a", now=NOW + 2, window=60, distinct=True) == (
        True,
        1,
    )


async def test_window_take_is_atomic_across_stores(store_url):
    """Two stores (two processes) racing for one budget never exceed it together."""
    stores = [open_store(store_url) for _ in range(32)]
    for s in stores:
        await s.open()
        await s.migrate()
    try:

        async def take(s, n):
            allowed, _ = await s.window_take("acme", "msg", str(n), now=NOW, window=3600, limit=25)
            return allowed

        results = await asyncio.gather(*(take(stores[n % 2], n) for n in range(60)))
        assert sum(results) == 25
    finally:
        for s in stores:
            await s.close()


async def test_window_take_all_counts_every_counter_or_none(store):
    """Several counters of one event: all take it, or none does and the first full one is named.

    The counts are those `window_take` keeps (one-minute buckets, a minute leaves once wholly
    outside the window), and a counter without a limit is counted but never full.
    """
    counters = [("recipients", 5), ("domain:example.net", 2), ("uncapped", None)]
    for n in range(2):
        assert await store.window_take_all("acme", counters, now=NOW + n, window=60) is None
    # The domain is full: nothing is counted, the hourly budget included.
    for n in range(3):
        refused = await store.window_take_all("acme", counters, now=NOW + 2 + n, window=60)
        assert refused == "domain:example.net"
    assert await store.window_take("acme", "recipients", "x", now=NOW + 5, window=60) == (True, 3)
    assert await store.window_take("acme", "uncapped", "x", now=NOW + 5, window=60) == (True, 3)
    # Another domain's counter is its own; the first full counter in the order given is named.
    other = [("recipients", 5), ("domain:example.org", 2)]
    assert await store.window_take_all("acme", other, now=NOW + 6, window=60) is None
    assert await store.window_take_all("acme", other, now=NOW + 7, window=60) is None
    assert await store.window_take_all("acme", other, now=NOW + 8, window=60) == "recipients"
    assert await store.window_take_all("globex", counters, now=NOW + 8, window=60) is None
    # Two minutes on, the first minute's counts have left the window.
    assert await store.window_take_all("acme", counters, now=NOW + 121, window=60) is None
    with pytest.raises(ValueError, match="named twice"):
        await store.window_take_all("acme", [("a", 1), ("a", 2)], now=NOW, window=60)


async def test_window_take_all_is_atomic_across_stores(store_url):
    """Stores racing for two shared budgets, in either order, never exceed either of them."""
    stores = [open_store(store_url) for _ in range(2)]
    for s in stores:
        await s.open()
        await s.migrate()
    try:

        async def take(n: int) -> str | None:
            counters = [("recipients", 30), ("domain:example.net", 20)]
            if n % 3 == 0:
                counters.reverse()
            return await stores[n % 2].window_take_all("acme", counters, now=NOW, window=3600)

        results = await asyncio.gather(*(take(n) for n in range(50)))
        assert results.count(None) == 20
        _, total = await stores[0].window_take("acme", "recipients", "x", now=NOW, window=3600)
        assert total == 21
    finally:
        for s in stores:
            await s.close()


async def test_prune_windows_drops_only_old_counters(store):
    """Counters of keys never used again (one per client IP) are pruned; live ones stay."""
    await store.window_take("*", "subscribe_ip:192.0.2.1", "x", now=NOW, window=3600, limit=10)
    await store.window_take("acme", "distinct", "a", now=NOW, window=3600, distinct=True)
    later = NOW + 7200
    await store.window_take("*", "subscribe_ip:192.0.2.2", "x", now=later, window=3600, limit=10)
    assert await store.prune_windows(NOW + 3600) == 2
    _, count = await store.window_take(
        "*", "subscribe_ip:192.0.2.2", "y", now=later, window=3600, limit=10
    )
    assert count == 2
    _, fresh = await store.window_take("*", "subscribe_ip:192.0.2.1", "z", now=later, window=9999)
    assert fresh == 1


async def test_idle_sqlite_store_takes_no_write_lock(tmp_path):
    """With nothing due, polling and migrating never wait for another process's write lock.

    A CLI command or a second process holding the lock (here: a plain sqlite3 connection in
    the middle of a write transaction) does not block an idle relay's delivery poll, and an
    up-to-date schema is not migrated again under the lock.
    """
    import sqlite3

    path = tmp_path / "relay.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    await store.migrate()
    try:
        assert await store.claim(lease="w:1", now=NOW, lease_until=NOW + 60, limit=10) == []
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            polls = [
                store.claim(lease=f"w:{n}", now=NOW, lease_until=NOW + 60, limit=10)
                for n in range(2, 5)
            ]
            assert await asyncio.wait_for(asyncio.gather(*polls), 2) == [[], [], []]
            await asyncio.wait_for(store.migrate(), 2)
        finally:
            other.execute("ROLLBACK")
            other.close()
        await store.spool(message())  # due again: the next claim leases it
        jobs = await store.claim(lease="w:9", now=NOW, lease_until=NOW + 60, limit=10)
        assert [job.recipient for job in jobs] == ["a@example.net"]
    finally:
        await store.close()


async def test_sqlite_processes_queue_on_one_writer_lock(tmp_path):
    """Stores sharing a file take turns on PATH.lock.

    A held lock holds writes, its release lets them through at once, and concurrent writers
    from both stores all commit.
    """
    import fcntl
    import os

    path = tmp_path / "relay.db"
    first, second = open_store(f"sqlite:///{path}"), open_store(f"sqlite:///{path}")
    await first.open()
    await first.migrate()
    await second.open()
    try:
        holder = os.open(tmp_path / "relay.db.lock", os.O_RDWR)
        fcntl.flock(holder, fcntl.LOCK_EX)
        write = asyncio.ensure_future(second.spool(message()))
        await asyncio.sleep(0.3)
        assert not write.done()
        released = asyncio.get_running_loop().time()
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
        await asyncio.wait_for(write, 5)
        assert asyncio.get_running_loop().time() - released < 1
        await asyncio.gather(
            *(store.spool(message()) for store in (first, second) for _ in range(100))
        )
        assert await first.counts() == {"pending": 201}
    finally:
        await second.close()
        await first.close()


async def test_one_failing_write_among_concurrent_ones_fails_alone(store):
    """Writes batched together (one transaction) still succeed or fail one by one.

    A message whose id is taken fails; the ones spooled at the same moment are committed, and
    deliveries recorded at the same moment all count.
    """
    first, second = message(["a@example.net"]), message(["b@example.net", "c@example.net"])
    clash = NewMessage(
        id=first.id,
        account_id="acme",
        mail_from="x@acme.example",
        recipients=("d@example.net",),
        content=b"Subject: clash\r\n\r\nbody\r\n",
        received_at=NOW,
    )
    outcomes = await asyncio.gather(
        store.spool(first), store.spool(clash), store.spool(second), return_exceptions=True
    )
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], StoreError)
    jobs = await store.claim(lease="w:1", now=NOW, lease_until=NOW + 60, limit=10)
    assert sorted(j.recipient for j in jobs) == ["a@example.net", "b@example.net", "c@example.net"]
    stale = dataclasses.replace(jobs[0], lease="w:old")  # another worker's lost lease
    done = await asyncio.gather(
        *(store.delivered(job, reply="250 ok", now=NOW + 1) for job in [stale, *jobs])
    )
    assert done == [False, True, True, True]
    assert await store.counts() == {"delivered": 3}
    for job in jobs:
        with pytest.raises(StoreError):
            await store.content(job.message_id)  # dropped once no recipient is pending


async def test_old_journal_entries_are_pruned_in_chunks(store, monkeypatch):
    """Entries older than the retention go, a few at a time; newer ones and their order stay."""
    import relay.storage.postgres.journal as pg_journal
    import relay.storage.sqlite.journal as sqlite_journal
    from relay.storage.records import JournalEntry

    monkeypatch.setattr(sqlite_journal, "PRUNE_CHUNK", 3)
    monkeypatch.setattr(pg_journal, "PRUNE_CHUNK", 3)
    old = [
        JournalEntry(f"OLD{n}", 1_000.0 + n, "rcpt", "acme", {"n": 1}, f"o{n}@example.net")
        for n in range(7)
    ]
    new = [
        JournalEntry("NEW", 5_000.0, "mail", "acme", {"verdict": "accept"}),
        JournalEntry("NEW", 5_000.0, "rcpt", "acme", {"n": 1, "verdict": "accept"}, "a@x.example"),
    ]
    await store.record_journal([*old, *new])
    assert await store.prune_journal(4_000.0) == 7
    kept = await store.journal("NEW")
    assert [(e.kind, e.detail) for e in kept] == [(e.kind, dict(e.detail)) for e in new]
    assert await store.journal("OLD0") == []
    assert await store.journal_messages("a@x.example", since=0, limit=5) == ["NEW"]


async def test_holding_unknown_messages_leaves_no_audit_row_for_the_whole_queue(store):
    """A hold that names only unknown ids changes nothing and audits nothing (not 'all')."""
    from relay.storage.records import QueueAction

    message = NewMessage(new_message_id(), "acme", "a@acme.example", ("b@x.example",), b"x", 1.0)
    await store.spool(message)
    action = QueueAction(at=2.0, actor="cli:test", action="hold", reason=None)
    assert await store.hold(hold=True, action=action, message_ids=["NOSUCHID"]) == []
    assert await store.queue_actions(message.id) == []
    assert await store.hold(hold=True, action=action, account_id="acme") == [message.id]
    assert [(a.action, a.account_id) for a in await store.queue_actions(message.id)] == [
        ("hold", "acme")
    ]


async def test_sqlite_lookup_that_would_wait_is_asked_in_the_reader_thread(tmp_path):
    """The loop's lookups never wait on a lock: a busy one is answered from the reader's thread.

    The loop's connection is pointed at a file another connection holds exclusively (a real
    SQLITE_BUSY); the lookup still answers from the store, and the loop runs on meanwhile.
    Any other SQLite error is a StoreError.
    """
    import sqlite3

    store = open_store(f"sqlite:///{tmp_path}/relay.db")
    await store.open()
    await store.migrate()
    locker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    try:
        await store.suppress(entry("ann@example.net"), actor="test")
        locker.execute("CREATE TABLE t (x)")
        locker.execute("BEGIN EXCLUSIVE")
        store._looker.close()
        store._looker = sqlite3.connect(tmp_path / "locked.db", check_same_thread=False)
        store._looker.execute("PRAGMA busy_timeout=0")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        found = await store.suppressed("ann@example.net", "acme")
        ticker.cancel()
        assert found is not None
        assert found.address == "ann@example.net"
        assert ticks > 0
        locker.execute("ROLLBACK")
        with pytest.raises(StoreError, match="no such table"):
            await store.suppressed("ann@example.net", "acme")  # the locked file has no such table
    finally:
        locker.close()
        await store.close()


async def test_sqlite_write_alone_that_fails_leaves_nothing(tmp_path):
    """A write committed on its own (no savepoint) that fails half-way is rolled back whole.

    The next write, alone or in a group, goes through.
    """
    import sqlite3

    store = open_store(f"sqlite:///{tmp_path}/relay.db")
    await store.open()
    await store.migrate()
    try:

        def half_then_fail(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO account_flags (account_id, flag, reason, set_at)"
                " VALUES ('acme', 'half', 'test', 0)"
            )
            db.execute("INSERT INTO no_such_table VALUES (1)")

        with pytest.raises(StoreError, match="no such table"):
            await store._write(half_then_fail)
        assert not await store.has_flag("acme", "half")

        def bug(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO account_flags (account_id, flag, reason, set_at)"
                " VALUES ('acme', 'bug', 'test', 0)"
            )
            raise KeyError("a bug in the operation")

        with pytest.raises(KeyError):
            await store._write(bug)
        assert not await store.has_flag("acme", "bug")
        assert await store.set_flag("acme", "after", reason="test", now=NOW)
        assert await store.has_flag("acme", "after")
    finally:
        await store.close()


async def test_postgres_connection_back_in_the_pool_costs_no_reset_round_trip(pg_url):
    """Releasing a connection sends nothing when no transaction is open; one left open is ended.

    asyncpg's default release sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
    after each query: the last statement the server saw would be that, not the store's own.
    A transaction a caller leaves open is still rolled back (its write is gone, the connection
    is idle, not idle in a transaction).
    """
    import asyncpg

    store = open_store(pg_url)
    await store.open()
    await store.migrate()
    watcher = await asyncpg.connect(store.url)
    try:
        [(pid,)] = await store._fetch("SELECT pg_backend_pid()")
        row = await watcher.fetchrow(
            "SELECT query, state FROM pg_stat_activity WHERE pid = $1", pid
        )
        assert (row["query"], row["state"]) == ("SELECT pg_backend_pid()", "idle")

        loop = asyncio.get_running_loop()
        complaints: list[str] = []
        loop.set_exception_handler(lambda _, context: complaints.append(context["message"]))
        async with store._acquire() as con:
            pid = await con.fetchval("SELECT pg_backend_pid()")
            await con.execute("BEGIN")
            await con.execute(
                "INSERT INTO account_flags (account_id, flag, reason, set_at)"
                " VALUES ('acme', 'left-open', 'test', 0)"
            )
        loop.set_exception_handler(None)
        row = await watcher.fetchrow(
            "SELECT query, state FROM pg_stat_activity WHERE pid = $1", pid
        )
        assert (row["query"], row["state"]) == ("ROLLBACK", "idle")
        assert any("active transaction" in message for message in complaints)
        assert not await store.has_flag("acme", "left-open")
    finally:
        await watcher.close()
        await store.close()


async def test_postgres_counters_commit_unflushed_and_nothing_else_does(pg_url):
    """A windowed counter's transaction commits without the WAL flush; it leaves no trace.

    The setting is local to the counters' own statement: the pooled connection it ran on
    commits the next write (a spooled message) with the server's `synchronous_commit` again.
    """
    migrated = open_store(pg_url)  # a concurrent migration step takes a second connection
    await migrated.open()
    await migrated.migrate()
    await migrated.close()
    store = open_store(pg_url)
    await store.open()
    try:
        await store.window_take("acme", "messages", "m1", now=NOW, window=3600, limit=10)
        await store.window_take_all("acme", [("recipients", 10)], now=NOW, window=3600)
        await store.record_campaign("acme", "c1", 5, now=NOW, window=3600)
        assert store._pool.get_size() == 1  # every call above ran on this one connection
        async with store._acquire() as con:
            assert await con.fetchval("SHOW synchronous_commit") == "on"
        assert await store.window_take_all("acme", [("recipients", 1)], now=NOW, window=60) == (
            "recipients"
        )
    finally:
        await store.close()


async def test_postgres_counters_of_concurrent_sessions_go_in_one_round_trip(pg_url):
    """What sessions ask meanwhile is one call of `window_apply`, each seeing the ones before.

    Before, every counter was a round trip and a transaction of its own: three per accepted
    message (messages per hour, its recipients' limits, its campaign), a third of the
    database's CPU per message in `make bench`.
    """
    store = open_store(pg_url)
    await store.open()
    await store.migrate()
    batches: list[int] = []
    apply = store._apply_counters

    async def spy(operations):
        batches.append(len(operations))
        return await apply(operations)

    store._apply_counters = spy
    try:
        taken, together, campaign = await asyncio.gather(
            asyncio.gather(
                *(
                    store.window_take("acme", "messages", f"m{n}", now=NOW, window=3600, limit=25)
                    for n in range(40)
                )
            ),
            asyncio.gather(
                *(
                    store.window_take_all(
                        "acme",
                        [("recipients", 8), ("domain:example.net", None)],
                        now=NOW,
                        window=3600,
                    )
                    for _ in range(10)
                )
            ),
            asyncio.gather(
                *(store.record_campaign("acme", "c1", 3, now=NOW, window=3600) for _ in range(10))
            ),
        )
        assert batches == [60]
        assert sorted(total for allowed, total in taken if allowed) == list(range(1, 26))
        assert [total for allowed, total in taken if not allowed] == [25] * 15
        assert together.count(None) == 8
        assert together.count("recipients") == 2
        assert sorted(campaign) == list(range(3, 31, 3))
        # the two refused spent nothing: the domain counted the 8 counted ones only
        assert (
            await store.window_take_all("acme", [("domain:example.net", 8)], now=NOW, window=3600)
            == "domain:example.net"
        )
    finally:
        await store.close()
