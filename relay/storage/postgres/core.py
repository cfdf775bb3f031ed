"""PostgreSQL backend (several relay nodes sharing state) through an asyncpg pool.

Claims use `FOR UPDATE SKIP LOCKED`, so concurrent workers on any node never lease the same
recipient. A `schema` query parameter in the URL selects a schema (created if missing).

The hot writes (spooling a message, recording a delivery) go through a `Batcher`: what
concurrent sessions and deliveries submit meanwhile is written in one transaction with one
statement per table over arrays (`unnest`), and each caller is answered once it is committed.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import asyncpg

from relay.errors import StoreError
from relay.logging import get_logger
from relay.storage.migrations import CONCURRENT, POSTGRES
from relay.storage.records import SchemaState
from relay.storage.schema import MIN_VERSION, floor_of
from relay.storage.url import parameter_problem, relay_parameters

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

Item = TypeVar("Item")
Result = TypeVar("Result")


# Any failure of the driver or the connection becomes a StoreError at this boundary: the
# server's errors, the client's (a closed connection), the network's, and InternalClientError,
# which a connection killed in the middle of an operation raises ("cannot switch to state 12;
# another operation is in progress") and which derives from neither of the first two.
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


log = get_logger(__name__)
_MIGRATION_LOCK = 0x6F7074696E  # an arbitrary advisory-lock key for migrations
# A migration's statement waits this long for its table locks (below PostgreSQL's
# deadlock_timeout of 1 s, so the migration gives up before a deadlock is even looked for),
# and the migration is tried again for this long.
MIGRATION_LOCK_TIMEOUT = "500ms"
MIGRATION_PATIENCE = 120.0


class Batcher(Generic[Item, Result]):
    """Concurrent submissions written together: `flush(items)` returns one result per item.

    One flush runs at a time; what arrives meanwhile waits for the next, so a batch grows with
    the load and costs one transaction. When a batch fails, its items are retried one by one,
    so one item's failure (a constraint, a bad value) fails that item alone.
    """

    def __init__(
        self, flush: Callable[[list[Item]], Awaitable[list[Result]]], *, limit: int = 256
    ) -> None:
        """Write with `flush`, at most `limit` items at a time."""
        self._flush = flush
        self._limit = limit
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        """Write `item` in the next batch; return its result once committed."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await future

    async def wait(self) -> None:
        """Wait until everything submitted is written."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._limit], self._queue[self._limit :]
            try:
                results = await self._flush([item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiting caller must get an answer
                if len(batch) == 1:
                    _answer(batch[0][1], exc)
                else:  # find the item that failed: the others are written one by one
                    for item, future in batch:
                        await self._one(item, future)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                _answer(future, result)

    async def _one(self, item: Item, future: asyncio.Future[Result]) -> None:
        try:
            [result] = await self._flush([item])
        except Exception as exc:  # noqa: BLE001 - as in _drain
            _answer(future, exc)
        else:
            _answer(future, result)


def _answer(future: asyncio.Future[Result], outcome: Result | Exception) -> None:
    if future.done():  # the caller gave up waiting; the write stands (or failed) all the same
        return
    if isinstance(outcome, Exception):
        error = outcome if isinstance(outcome, StoreError) else StoreError(f"PostgreSQL: {outcome}")
        future.set_exception(error)
    else:
        future.set_result(outcome)


async def _session_unchanged(con: asyncpg.Connection) -> None:
    """What a connection returned to the pool needs beyond asyncpg's own ROLLBACK: nothing.

    asyncpg's default sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on
    every release: a second round trip (and server work) for each query, more than half the
    statements the server ran per message. The store leaves no session state behind: its
    advisory locks are transaction-scoped, it declares no cursors outside a transaction,
    listens to nothing and changes no setting (the schema is a connection parameter). An open
    transaction is still rolled back by asyncpg before this is called.
    """
    del con


class PostgresCore:
    """The `Store` on PostgreSQL."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        """Connect to `url` on `open`."""
        problem = parameter_problem(url)
        if problem is not None:
            raise ValueError(problem)
        self.url, self.schema, self.pooler = relay_parameters(url)
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Create the pool (and the schema, if one is named)."""
        settings = {"search_path": self.schema} if self.schema else {}
        try:
            if self.schema:
                con = await asyncpg.connect(self.url)
                try:
                    await con.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await con.close()
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                server_settings=settings,
                reset=_session_unchanged,
                # Behind a pooler in transaction mode a prepared statement lives on a server
                # connection the next transaction may not get: none are kept.
                statement_cache_size=0 if self.pooler else 100,
            )
        except DB_ERRORS as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc

    async def close(self) -> None:
        """Finish batched writes, then close the pool."""
        for batcher in self._batchers():
            await batcher.wait()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _batchers(self) -> list[Batcher[Any, Any]]:
        """The batchers of the store's parts (each part adds its own)."""
        return []

    def _acquire(self) -> AbstractAsyncContextManager[Any]:
        if self._pool is None:
            raise StoreError("the store is not open")
        return cast("AbstractAsyncContextManager[Any]", self._pool.acquire())

    async def _fetch(self, sql: str, *args: object) -> list[Any]:
        try:
            async with self._acquire() as con:
                return list(await con.fetch(sql, *args))
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def migrate(self) -> None:
        """Apply missing migrations under an advisory lock (nodes may start together).

        Under load (a running fleet, `optin-relay migrate` as an upgrade step) a step's table
        lock would queue behind the relay's transactions and every later query behind it, or
        deadlock with one (a delivery locks recipients, then messages): each statement waits at
        most MIGRATION_LOCK_TIMEOUT for its locks, and the round of steps, rolled back, is
        tried again until MIGRATION_PATIENCE has passed. The relay's own transactions are never
        the ones given up. Indexes are built CONCURRENTLY, outside a transaction (CONCURRENT).
        """
        deadline = time.monotonic() + MIGRATION_PATIENCE
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._migrate_once()
            except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"PostgreSQL migration failed: the tables stayed busy for"
                        f" {MIGRATION_PATIENCE:g} s ({exc})"
                    ) from exc
                log.info("migration_retry", attempt=attempt, error=str(exc))
                await asyncio.sleep(min(0.1 * attempt, 2.0))
            except DB_ERRORS as exc:
                raise StoreError(f"PostgreSQL migration failed: {exc}") from exc
            else:
                return

    async def _migrate_once(self) -> None:
        """Apply the pending steps: rounds of steps in one transaction, then a concurrent one.

        A step in CONCURRENT cannot run in a transaction: the steps before it are committed
        first (it may build on them, and would wait for the transaction that made them), then
        one connection holds the migration lock in a transaction while another runs the
        step's statements, and the first records the step. Both are transactions, so this
        holds behind PgBouncer in transaction mode too.
        """
        waited = 0
        while True:
            async with self._acquire() as con, con.transaction():
                done = await self._locked(con)
                if done is not None:
                    await self._round(con, done)
            if done is None:  # another node migrates: ask again (see _locked)
                waited += 1
                if waited % 50 == 0:
                    log.info("migration_waiting", seconds=waited // 5)
                await asyncio.sleep(0.2)
            elif done.issuperset(v for v, _ in POSTGRES):
                return

    async def _locked(self, con: asyncpg.Connection) -> set[int] | None:
        """Take the migration lock in `con`'s transaction: the steps applied, or None if taken.

        Never waits for the lock inside a statement: an index built CONCURRENTLY waits for
        every transaction whose snapshot is older than its own, and one waiting here for the
        node that builds it would wait forever with it.
        """
        if not await con.fetchval("SELECT pg_try_advisory_xact_lock($1)", _MIGRATION_LOCK):
            return None
        await con.execute(f"SET LOCAL lock_timeout = '{MIGRATION_LOCK_TIMEOUT}'")
        await con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        return {row[0] for row in await con.fetch("SELECT version FROM schema_migrations")}

    async def _round(self, con: asyncpg.Connection, done: set[int]) -> None:
        """The steps up to the next concurrent one, or that one alone; `done` grows."""
        committed = frozenset(done)
        for version, script in POSTGRES:
            if version in done:
                continue
            if version in CONCURRENT:
                if not committed.issuperset(v for v, _ in POSTGRES if v < version):
                    break  # the steps before it are committed first
                # The index build waits for every transaction holding an older snapshot, this
                # one too: an extended-protocol statement's portal keeps its snapshot until
                # the next statement, and a simple query (no arguments) drops it.
                await con.execute("SELECT 1")
                async with self._acquire() as worker:
                    for statement in filter(None, map(str.strip, script.split(";"))):
                        await worker.execute(statement)
            else:
                await con.execute(script)
            await con.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            done.add(version)
            if version in CONCURRENT:
                break  # recorded: the next round starts a new transaction
        recorded = await con.fetchval("SELECT value FROM schema_info WHERE key = $1", MIN_VERSION)
        await con.execute(
            "INSERT INTO schema_info (key, value) VALUES ($1, $2)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            MIN_VERSION,
            floor_of(done, recorded),
        )

    async def backup(self, target: Path) -> int:
        """Not for PostgreSQL: its own tools do it better (docs/operations.md#backups)."""
        del target
        raise StoreError(
            "optin-relay backup copies a SQLite store; back PostgreSQL up with pg_dump or"
            " continuous archiving (docs/operations.md, Backups)"
        )

    async def schema_state(self) -> SchemaState:
        """The migration steps applied and the oldest release the schema allows."""
        rows = await self._fetch(
            "SELECT to_regclass('schema_migrations') IS NOT NULL,"
            " to_regclass('schema_info') IS NOT NULL"
        )
        has_steps, has_info = rows[0]
        applied: set[int] = set()
        floor = None
        if has_steps:
            applied = {row[0] for row in await self._fetch("SELECT version FROM schema_migrations")}
        if has_info:
            found = await self._fetch("SELECT value FROM schema_info WHERE key = $1", MIN_VERSION)
            floor = found[0][0] if found else None
        return SchemaState(frozenset(applied), tuple(v for v, _ in POSTGRES), floor)

    async def ping(self) -> None:
        """Run a trivial query."""
        await self._fetch("SELECT 1")
