"""SQLite backend (the embedded default): aiosqlite, WAL, synchronous=FULL.

One connection writes; a second, read-only one serves reads, which WAL never makes wait.

Writes use group commit: concurrent writers queue their operation, and one writer task runs
every queued operation in a single transaction (each in its own savepoint, so one failing
operation fails alone), then answers each caller only after COMMIT has returned. One fsync then
covers many messages. `BEGIN IMMEDIATE` also serialises writers across processes sharing a file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite

from relay.errors import StoreError
from relay.storage.migrations import SQLITE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable


T = TypeVar("T")


_GROUP_LIMIT = 256  # operations per transaction


@dataclass(frozen=True)
class _Failed:
    """An operation of a group that failed (and was rolled back to its savepoint)."""

    error: Exception


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


class SqliteCore:
    """The `Store` on a SQLite file."""

    def __init__(self, path: str) -> None:
        """Use the database file at `path` (created on `open`)."""
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._queue: list[
            tuple[Callable[[aiosqlite.Connection], Awaitable[Any]], asyncio.Future[Any]]
        ] = []
        self._writer: asyncio.Task[None] | None = None
        self._nothing_due = False  # the last delivery claim found nothing (see SqliteSpool.claim)

    async def open(self) -> None:
        """Open the file (creating its folder) and set durable pragmas."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc.strerror}") from exc
        pending = aiosqlite.connect(self.path, isolation_level=None)
        db: aiosqlite.Connection | None = None
        try:
            db = await pending
            for pragma in (
                "PRAGMA journal_mode=WAL",
                "PRAGMA synchronous=FULL",
                "PRAGMA foreign_keys=ON",
                "PRAGMA busy_timeout=10000",
            ):
                await db.execute(pragma)
        except (OSError, sqlite3.Error) as exc:
            if db is not None:
                await db.close()
            else:
                # aiosqlite stops its worker thread after a failed connect without waiting;
                # wait here, so the thread never reports to an event loop that has closed.
                await asyncio.to_thread(pending._thread.join, 5)  # noqa: SLF001
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._db = db
        try:
            # Reads use a second connection: in WAL mode they never wait for a writer.
            reader = await aiosqlite.connect(self.path, isolation_level=None)
            await reader.execute("PRAGMA busy_timeout=10000")
            await reader.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._reader = reader

    async def close(self) -> None:
        """Finish queued writes, then close the connection."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._db is None:
            raise StoreError("the store is not open")
        async with self._lock:
            db = self._db
            try:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    await db.execute("ROLLBACK")
                    raise
                await db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite: {exc}") from exc

    async def _write(self, operation: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run `operation` in the next group transaction; return once it is committed."""
        if self._db is None:
            raise StoreError("the store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((operation, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:_GROUP_LIMIT], self._queue[_GROUP_LIMIT:]
            try:
                outcomes = await self._commit_group([operation for operation, _ in batch])
            except StoreError as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # the caller gave up waiting; the write stands
                    continue
                if isinstance(outcome, _Failed):
                    future.set_exception(outcome.error)
                else:
                    future.set_result(outcome)

    async def _commit_group(
        self, operations: list[Callable[[aiosqlite.Connection], Awaitable[Any]]]
    ) -> list[Any]:
        """Run `operations` in one transaction, each in a savepoint; raise if COMMIT fails."""
        async with self._lock:
            db = self._db
            if db is None:
                raise StoreError("the store is not open")
            outcomes: list[Any] = []
            try:
                await db.execute("BEGIN IMMEDIATE")
                for operation in operations:
                    await db.execute("SAVEPOINT operation")
                    try:
                        outcomes.append(await operation(db))
                    except sqlite3.Error as exc:
                        await db.execute("ROLLBACK TO operation")
                        outcomes.append(_Failed(StoreError(f"SQLite: {exc}")))
                    except Exception as exc:  # noqa: BLE001 - a bug in one operation fails it alone
                        await db.execute("ROLLBACK TO operation")
                        outcomes.append(_Failed(exc))
                    await db.execute("RELEASE operation")
                await db.execute("COMMIT")
            except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite after close
                with suppress(sqlite3.Error, ValueError):
                    await db.execute("ROLLBACK")
                raise StoreError(f"SQLite: {exc}") from exc
            return outcomes

    async def _fetch(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        if self._reader is None:
            raise StoreError("the store is not open")
        try:
            async with self._reader.execute(sql, tuple(params)) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc

    async def migrate(self) -> None:
        """Apply every migration not yet applied."""
        # Asked on the reader first: a schema that is up to date takes no write lock, so a CLI
        # command never waits for a busy relay just to find there is nothing to migrate.
        with suppress(StoreError):
            rows = await self._fetch("SELECT version FROM schema_migrations")
            if {row[0] for row in rows} >= {version for version, _ in SQLITE}:
                return
        async with self._tx() as db:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            async with db.execute("SELECT version FROM schema_migrations") as cursor:
                done = {row[0] for row in await cursor.fetchall()}
            for version, script in SQLITE:
                if version in done:
                    continue
                for statement in _statements(script):
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))

    async def ping(self) -> None:
        """Run a trivial query."""
        await self._fetch("SELECT 1")
