"""The plans PostgreSQL runs for the relay's hot statements, read from the server itself.

auto_explain (shipped with PostgreSQL, loaded into the test's own session) reports the plan of
every statement the session runs, nested ones included, with the rows each step really read.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

import asyncpg
import pytest

from relay.storage import NewMessage, open_store
from relay.storage.postgres.spool import COMPLETED
from relay.storage.records import new_message_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from relay.storage.base import Store

NOW = 1_800_000_000.0
QUEUED = 2000


async def explained(con: asyncpg.Connection) -> list[str]:
    """Have the server report each plan to `con` as a notice; the list fills as they come."""
    notices: list[str] = []
    con.add_log_listener(lambda _con, message: notices.append(message.message))
    await con.execute("LOAD 'auto_explain'")
    for setting, value in (
        ("log_min_duration", "0"),
        ("log_analyze", "on"),
        ("log_nested_statements", "on"),
        ("log_level", "notice"),
    ):
        await con.execute(f"SET auto_explain.{setting} = {value}")
    return notices


async def spool_queue(store: Store) -> None:
    """QUEUED one-recipient messages, spooled as the relay spools them, due one a second.

    (A bulk INSERT ... SELECT would leave the planner statistics that get the good plans.)
    """
    await asyncio.gather(
        *(
            store.spool(
                NewMessage(
                    id=new_message_id(),
                    account_id="acme",
                    mail_from="news@acme.example",
                    recipients=(f"r{n}@example.net",),
                    content=b"Subject: x\r\n\r\nbody\r\n",
                    received_at=NOW + n,
                )
            )
            for n in range(1, QUEUED + 1)
        )
    )


@pytest.fixture
async def queued(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A store with QUEUED messages spooled and never analysed; a connection to its schema."""
    store = open_store(pg_url)
    await store.open()
    await store.migrate()
    con = await asyncpg.connect(store.url, server_settings={"search_path": store.schema or ""})
    try:
        await spool_queue(store)
        analysed = await con.fetchval(
            "SELECT last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL"
            " FROM pg_stat_user_tables WHERE relid = 'recipients'::regclass"
        )
        assert not analysed
        yield con
    finally:
        await con.close()
        await store.close()


async def test_the_claim_walks_the_queue_in_order_whatever_the_statistics_say(queued):
    """The claim reads as many queued recipients as it leases, on a table never analysed.

    Before, the claim's plan followed the statistics: on a queue they no longer described (a
    new schema, a burst after a quiet week) it joined every due recipient to its message and
    sorted them all to take the first few, 3-7 ms a claim at 2,000 queued (the database's
    largest cost per delivered message in `make bench`), and more as the queue grows.
    """
    con = queued
    plans = await explained(con)
    later = NOW + QUEUED + 1
    rows = await con.fetch(
        "SELECT * FROM claim_recipients('test:1', $1, $2, 10)", later, later + 60
    )
    assert sorted(row["rcpt"] for row in rows) == sorted(f"r{n}@example.net" for n in range(1, 11))
    (claim,) = [plan for plan in plans if "WITH picked" in plan]
    assert "Sort" not in claim
    walked = re.search(
        r"Index Scan using recipients_pending on recipients .*rows=(\d+) loops=1", claim
    )
    assert walked is not None, claim
    assert int(walked.group(1)) == 10  # the limit: nothing read past it


async def test_completing_messages_asks_each_message_not_the_whole_queue(queued):
    """After a delivery batch, each of its messages is checked for a recipient still to go.

    Before, the check was a `NOT EXISTS` the planner made a hash anti join: on statistics that
    said the queue was small it read every pending recipient of the queue for a batch of a few
    messages, a cost growing with the queue at every delivery batch.
    """
    con = queued
    batch = [row[0] for row in await con.fetch("SELECT id FROM messages LIMIT 10")]
    await con.execute(
        "UPDATE recipients SET status = 'delivered' WHERE message_id = ANY($1)", batch
    )
    plans = await explained(con)
    transaction = con.transaction()
    await transaction.start()
    assert await con.execute(COMPLETED, NOW, batch) == f"UPDATE {len(batch)}"
    await transaction.rollback()
    (plan,) = [plan for plan in plans if "UPDATE messages m" in plan]
    assert "Hash" not in plan, plan
    assert "recipients_pending" not in plan, plan  # the queue's index: not read at all
    probe = re.search(r"Index Scan (?:using|on) recipients_message .*loops=(\d+)", plan)
    assert probe is not None, plan
    assert int(probe.group(1)) == len(batch)  # one look per message of the batch
