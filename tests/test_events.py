"""The events outbox: each fact writes its event in its own transaction; paging is exact."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
from conftest import (
    PASSWORD,
    PASSWORD_HASH,
    config_data,
    eventually,
    read_events,
    simple_message,
    smtp_client,
)
from messages import token_of
from receiver import SECRET, Receiver, started

from relay.errors import CursorError
from relay.storage import NewMessage, open_store
from relay.storage.events import EVENT_TYPES, refused_event
from relay.storage.records import Suppression, new_event_id, new_message_id

NOW = 1_800_000_000.0
DOCS = Path(__file__).parents[1] / "docs" / "events.md"


def message(recipients=("a@example.net",), account="acme"):
    return NewMessage(
        id=new_message_id(),
        account_id=account,
        mail_from="news@acme.example",
        recipients=tuple(recipients),
        content=b"Subject: x\r\n\r\nbody\r\n",
        received_at=NOW,
    )


async def test_each_fact_writes_its_event(store):
    """Spooled, delivered, deferred, failed, suppressed, unsuppressed, suspended: one event each."""
    spooled = message(["a@example.net", "b@example.net", "c@example.net"])
    await store.spool(spooled)
    await store.spool(message(account="globex"))  # another account's events stay its own
    jobs = {
        job.recipient: job
        for job in await store.claim(lease="L", now=NOW, lease_until=NOW + 60, limit=10)
        if job.account_id == "acme"
    }
    assert await store.delivered(jobs["a@example.net"], reply="250 2.0.0 ok", now=NOW + 1)
    assert await store.deferred(
        jobs["b@example.net"], reply="451 4.7.1 try later", now=NOW + 2, next_attempt=NOW + 60
    )
    assert await store.failed(
        jobs["c@example.net"], reply="550 5.1.1 no such user", now=NOW + 3, dsn=None
    )
    entry = Suppression("c@example.net", "acme", "unsubscribe", "one_click", NOW + 4)
    assert await store.suppress(entry, actor="recipient")
    assert await store.unsuppress(
        "c@example.net", "acme", reason="resubscribed", actor="op", now=NOW + 5
    )
    await store.set_account_state("acme", "suspended", reason="test", actor="op", now=NOW + 6)
    await store.record_events(
        [
            refused_event(
                "acme", "d@example.net", rule="consent.missing", reply="550 5.7.1 no", now=NOW + 7
            )
        ]
    )
    found = await read_events(store, 9)
    assert [e.type for e in found] == [
        "message.accepted",
        "message.delivered",
        "message.deferred",
        "message.failed",
        "suppression.added",
        "recipient.unsubscribed",
        "suppression.removed",
        "account.suspended",
        "recipient.refused",
    ]
    accepted, delivered, deferred, failed = found[:4]
    assert accepted.message_id == spooled.id
    assert accepted.data["recipients"] == ["a@example.net", "b@example.net", "c@example.net"]
    assert (delivered.recipient, delivered.data["reply"]) == ("a@example.net", "250 2.0.0 ok")
    assert (deferred.data["status"], deferred.data["next_attempt"]) == ("4.7.1", NOW + 60)
    assert (failed.data["status"], failed.data["reply"]) == ("5.1.1", "550 5.1.1 no such user")
    assert len({e.id for e in found}) == len(found)
    assert [e.type for e in await read_events(store, 1, "globex")] == ["message.accepted"]
    only = await read_events(store, 2, types=frozenset({"message.failed", "recipient.refused"}))
    assert [e.type for e in only] == ["message.failed", "recipient.refused"]


async def test_no_event_without_its_fact(store):
    """A lease lost, a suppression already there: no fact changed, so no event."""
    await store.spool(message())
    (job,) = await store.claim(lease="L", now=NOW, lease_until=NOW + 60, limit=10)
    stale = job.__class__(**{**job.__dict__, "lease": "other"})
    assert not await store.delivered(stale, reply="250 ok", now=NOW)
    entry = Suppression("a@example.net", "acme", "bounce", "dsn", NOW)
    assert await store.suppress(entry, actor="dsn")
    assert not await store.suppress(entry, actor="dsn")
    types = [e.type for e in await read_events(store, 3)]
    assert types == ["message.accepted", "suppression.added", "recipient.bounced"]


async def test_concurrent_writers_page_exactly_once(store_url):
    """Two stores (as two relays) writing at once: paging with limit 7 sees each event once."""
    first, second = open_store(store_url), open_store(store_url)
    for s in (first, second):
        await s.open()
        await s.migrate()
    try:
        seen: list[str] = []
        after = None

        async def write(s, n):
            for _ in range(n):
                await s.spool(message())

        async def read_while_writing():
            nonlocal after
            for _ in range(200):
                page = await first.events("acme", after=after, limit=7)
                seen.extend(e.id for e in page)
                if page:
                    after = page[-1].cursor
                await asyncio.sleep(0)

        await asyncio.gather(write(first, 120), write(second, 120), read_while_writing())
        # On PostgreSQL, an event shows once every older transaction of the cluster has ended
        # (other tests' too): the feed may lag, but it never skips. Poll as a CRM would.
        for _ in range(500):
            page = await second.events("acme", after=after, limit=7)
            seen.extend(e.id for e in page)
            if page:
                after = page[-1].cursor
            elif len(seen) >= 240:
                break
            else:
                await asyncio.sleep(0.02)
        assert len(seen) == 240
        assert len(set(seen)) == 240
    finally:
        await first.close()
        await second.close()


def test_event_ids_sort_by_creation_time(monkeypatch):
    """`evt_` and 24 hex digits, the first 11 the time in milliseconds: later ids sort after.

    New ids go to the end of the unique index on `events.id`, not anywhere in it.
    """
    import time

    now = [1_796_000_000_000]
    monkeypatch.setattr(time, "time_ns", lambda: now[0] * 1_000_000)
    ids = []
    for _ in range(50):
        ids.append(new_event_id())
        now[0] += 1
    assert all(re.fullmatch(r"evt_[0-9a-f]{24}", i) for i in ids)
    assert ids == sorted(ids)
    assert ids[0].startswith(f"evt_{1_796_000_000_000:011x}")
    assert len({new_event_id() for _ in range(1000)}) == 1000  # the same millisecond: unique


def test_every_event_type_is_documented():
    """docs/events.md has a section, a field table and an example for each type emitted."""
    text = DOCS.read_text()
    documented = set(re.findall(r"^### `([a-z]+\.[a-z]+)`", text, re.MULTILINE))
    assert documented == set(EVENT_TYPES)
    for kind in EVENT_TYPES:
        section = text.split(f"### `{kind}`", 1)[1].split("\n### ", 1)[0]
        assert f'"type": "{kind}"' in section, kind


async def get_events(relay, query=""):
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{relay.web_port}/api/v1/events?{query}",
            headers={"Authorization": f"Bearer acme:{PASSWORD}"},
        ) as response,
    ):
        return response.status, await response.json()


async def collect(relay, types, count):
    """Page through the account's events of `types` until `count` came, as a CRM polls.

    On PostgreSQL an event shows once every older transaction of the cluster has ended (with
    other tests running, a moment later): the feed may lag, never skip.
    """
    seen, after = [], None
    for _ in range(500):
        query = f"types={types}&limit=5" + (f"&after={after}" if after else "")
        status, body = await get_events(relay, query)
        assert status == 200, body
        seen += body["events"]
        after = body["next"]
        if len(seen) >= count and not body["events"]:
            return seen
        if not body["events"]:
            await asyncio.sleep(0.02)
    raise AssertionError(f"{len(seen)} of {count} events of {types}")


async def send_to(relay, recipients):
    """One transaction to `recipients`; the RCPT replies by address."""
    client = await smtp_client(relay.smtp_ports[0], login=("acme-crm", PASSWORD))
    await client.mail("news@acme.example")
    codes = {}
    for address in recipients:
        codes[address] = (await client.execute_command(f"RCPT TO:<{address}>".encode())).code
    if 250 in codes.values():
        await client.data(simple_message())
    await client.quit()
    return codes


async def test_the_weekly_newsletter_suspends_nobody_who_learned_in_time(
    start_relay, store_url, upstream, tls_files, clock
):
    """Issue 14's story: 12 subscribers, 11 one-click unsubscribes, the same newsletter again.

    The CRM's webhook receiver (a real server on a loopback port) gets 11 signed
    `recipient.unsubscribed` events, and the events API shows them too; the second send refuses
    the 11 at RCPT (each a `recipient.refused` with its rule) and the account stays active;
    past the 72-hour grace the same 11 are violations, and the 11th suspends the account.
    """
    receiver = Receiver()
    await receiver.start()
    data = config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    data["accounts"][0]["api_key_hash"] = PASSWORD_HASH
    data["webhooks"] = {"allow_private": True, "poll_interval": 0.05}
    data["accounts"][0]["webhooks"] = [
        {
            "url": f"http://127.0.0.1:{receiver.port}/hook",
            "secret": SECRET,
            "events": ["recipient.unsubscribed"],
        }
    ]
    try:
        await _weekly_newsletter(start_relay, data, upstream, clock, receiver)
    finally:
        await receiver.stop()


async def _weekly_newsletter(start_relay, data, upstream, clock, receiver):
    relay = await started(start_relay, data)
    subscribers = [f"reader{n}@example.net" for n in range(12)]
    assert set((await send_to(relay, subscribers)).values()) == {250}
    await eventually(lambda: len(upstream.messages) == 12)
    leaving = {m.rcpt: token_of(m.content) for m in upstream.messages if m.rcpt != subscribers[0]}
    async with aiohttp.ClientSession() as http:
        for token in leaving.values():
            url = f"http://127.0.0.1:{relay.web_port}/u/{token}"
            async with http.post(url, data=b"List-Unsubscribe=One-Click") as response:
                assert response.status == 200
    seen = await collect(relay, "recipient.unsubscribed", 11)
    assert sorted(e["recipient"] for e in seen) == sorted(leaving)
    assert {e["data"]["source"] for e in seen} == {"one_click"}
    await eventually(lambda: len(receiver.received) == 11)
    pushed = receiver.events()  # each verified with the standardwebhooks verifier
    assert [(e["type"], e["recipient"]) for e in pushed] == [
        (e["type"], e["recipient"]) for e in seen
    ]

    clock.advance(48 * 3600)  # the next send, two days later: within the grace
    codes = await send_to(relay, subscribers)
    assert [a for a, code in codes.items() if code == 550] == sorted(leaving, key=subscribers.index)
    assert await relay.store.account_state("acme") is None  # still active
    refused = await collect(relay, "recipient.refused", 11)
    assert len(refused) == 11
    assert {e["data"]["rule"] for e in refused} == {"suppression.unsubscribe"}

    clock.advance(73 * 3600)  # the CRM has had 72 hours to learn of them
    codes = await send_to(relay, list(leaving))
    assert set(codes.values()) == {550}
    state = await relay.store.account_state("acme")
    assert (state.state, state.reason) == ("suspended", "suppression_violations: 11 > 10")
    suspended = await collect(relay, "account.suspended", 1)
    assert [e["data"]["reason"] for e in suspended] == ["suppression_violations: 11 > 10"]


async def test_the_events_api_checks_its_input(start_relay, sqlite_url, upstream, tls_files):
    """A bad cursor, limit or type is a 400 with its code; no key is a 401."""
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    data["accounts"][0]["api_key_hash"] = PASSWORD_HASH
    relay = await start_relay(data)
    for query, code in [
        ("after=x'--", "invalid_cursor"),
        ("after=1.5", "invalid_cursor"),  # SQLite's cursors are whole numbers
        ("after=99999", "invalid_cursor"),  # past the end of the feed
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("limit=ten", "invalid_limit"),
        ("types=message.accepted,message.exploded", "unknown_type"),
    ]:
        status, body = await get_events(relay, query)
        assert (status, body["error"]) == (400, code), query
    status, body = await get_events(relay)
    assert (status, body) == (200, {"events": [], "next": None})
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{relay.web_port}/api/v1/events") as response,
    ):
        assert response.status == 401


async def test_subscriptions_and_cases_write_their_events(store):
    """Requested, confirmed (lifting an unsubscribe), case opened, case decided."""
    from relay.storage.records import Case, CaseChange, Confirmation, Consent, Subscription

    entry = Suppression("fan@example.net", "acme", "unsubscribe", "one_click", NOW)
    await store.suppress(entry, actor="recipient")
    item = Subscription(
        "hash1",
        "acme",
        "news",
        "fan@example.net",
        "pending",
        NOW,
        NOW + 3600,
        "192.0.2.1",
        "ua",
        "https://relay.example/s/acme/news",
        "v1",
        "Yes, send me the news",
    )
    await store.add_subscription(item)
    record = Consent(
        "acme",
        "fan@example.net",
        "news",
        "confirmed",
        NOW,
        NOW + 60,
        "form",
        "192.0.2.1",
        consent_text_version="v1",
    )
    assert await store.confirm_subscription(
        "hash1", Confirmation(NOW + 60, "192.0.2.1", "ua", record, "form:confirm")
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
        NOW + 100,
        NOW + 100 + 86400 * 7,
        NOW + 100,
    )
    assert await store.open_case(case)
    change = CaseChange(
        "fined", "fine", "op", "no proof", resolution="no proof", fine_cents=5000, resolved=True
    )
    assert await store.change_case("case1", change, expect=("awaiting_proof",), now=NOW + 200)
    found = await read_events(store, 7)
    assert [e.type for e in found] == [
        "suppression.added",
        "recipient.unsubscribed",
        "subscription.requested",
        "subscription.confirmed",
        "suppression.removed",
        "case.opened",
        "case.decided",
    ]
    assert found[3].data["list"] == "news"
    assert (found[5].data["case_id"], found[5].message_id) == ("case1", "Q1")
    assert (found[6].data["status"], found[6].data["fine_cents"]) == ("fined", 5000)


async def test_old_events_are_pruned(store, monkeypatch):
    """Events older than the retention go, in chunks; the feed goes on after the cursor."""
    import relay.storage.postgres.events as pg_events
    import relay.storage.sqlite.events as sqlite_events

    monkeypatch.setattr(sqlite_events, "PRUNE_CHUNK", 3)
    monkeypatch.setattr(pg_events, "PRUNE_CHUNK", 3)
    old = [
        refused_event("acme", f"o{n}@example.net", rule="r", reply="550", now=NOW) for n in range(7)
    ]
    new = refused_event("acme", "n@example.net", rule="r", reply="550", now=NOW + 86400 * 40)
    await store.record_events([*old, new])
    before = await read_events(store, 8)
    assert await store.prune_events(NOW + 86400 * 30) == 7
    assert [e.id for e in await read_events(store, 1)] == [new.id]
    assert [e.id for e in await store.events("acme", after=before[2].cursor)] == [new.id]


async def test_a_cursor_the_store_never_issued_is_refused(store):
    """Malformed for the backend, or past the end of the feed: `CursorError`, never a re-read.

    Before, SQLite read `1.5` and PostgreSQL `99999` as "from the start" (the whole feed again),
    and a cursor too large for the database's integers was a 500 (schemathesis found that).
    """
    await store.record_events(
        [refused_event("acme", f"{n}@example.net", rule="r", reply="550", now=NOW) for n in "ab"]
    )
    first, last = await read_events(store, 2)
    assert await store.events("acme", after=last.cursor) == []  # caught up: an empty page
    assert [e.id for e in await store.events("acme", after=first.cursor)] == [last.id]
    if "." in first.cursor:  # PostgreSQL: TXID.SEQ
        txid, seq = last.cursor.split(".")
        malformed = ["99999", "1.5.", ".5", "1.x"]
        ahead = [
            f"{int(txid) + 1000}.{seq}",  # a transaction that has not started
            f"{txid}.{int(seq) + 1000}",  # a number the sequence never reached
            "99999999999999999999999.1",
            "1.99999999999999999999",
        ]
    else:  # SQLite: SEQ
        malformed = ["1.5", "1.", "-1", "+1"]
        ahead = [str(int(last.cursor) + 1000), "7792135041095360068318764"]
    for cursor in malformed + ahead:
        with pytest.raises(CursorError):
            await store.events("acme", after=cursor)


async def test_every_refusal_is_an_event_at_every_stage(
    start_relay, store_url, upstream, tls_files
):
    """MAIL: `message.refused`; RCPT and DATA: one `recipient.refused` per recipient.

    A message refused whole at DATA once left only a log line; `stats` counts what the events
    say (one `refused` per `recipient.refused`).
    """
    data = config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    data["accounts"][0]["api_key_hash"] = PASSWORD_HASH
    relay = await start_relay(data)
    now = relay.clock.now()
    await relay.store.suppress(
        Suppression("gone@example.net", "acme", "unsubscribe", "one_click", now), actor="t"
    )
    client = await smtp_client(relay.smtp_ports[0], login=("acme-crm", PASSWORD))
    await client.mail("news@acme.example")
    assert (await client.execute_command(b"RCPT TO:<gone@example.net>")).code == 550
    for address in ("a@example.net", "b@example.net"):
        assert (await client.rcpt(address))[0] == 250
    foreign = simple_message(sender="news@elsewhere.example")  # a From the account may not use
    with pytest.raises(aiosmtplib.SMTPDataError) as refused_data:
        await client.data(foreign)
    assert refused_data.value.code == 550
    await relay.store.set_account_state("acme", "suspended", reason="t", actor="t", now=now)
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await client.mail("news@acme.example")
    await client.quit()

    types = frozenset({"message.refused", "recipient.refused"})
    events = await read_events(relay.store, 4, types=types)
    assert [(e.type, e.recipient, e.data["stage"]) for e in events] == [
        ("recipient.refused", "gone@example.net", "rcpt"),
        ("recipient.refused", "a@example.net", "data"),
        ("recipient.refused", "b@example.net", "data"),
        ("message.refused", None, "mail"),
    ]
    assert events[0].message_id is None
    assert events[1].message_id == events[2].message_id is not None  # the refused transaction
    assert events[1].data["reply"].startswith("550 5.7.1")
    assert events[1].data["rule"].startswith("from_domain")
    assert events[3].data["rule"] == "account_state.suspended"
    assert events[3].data["mail_from"] == "news@acme.example"
    assert events[3].message_id is not None
    totals = (await relay.store.stats(since=0, account_id="acme"))["acme"]
    assert totals["refused"] == 3  # the three recipient.refused events
    status, body = await get_events(relay, "types=message.refused")
    assert (status, [e["type"] for e in body["events"]]) == (200, ["message.refused"])
