"""SQLite backend (the embedded default): WAL, synchronous=FULL, group commit in one thread hop.

Reads go through aiosqlite on a read-only connection, which WAL never makes wait. The hot path's
point lookups (an account's state, a suppression, an opt-in record, a campaign's repeat counts)
run on the event loop's own read-only connection instead: an indexed lookup takes microseconds,
two thread hand-offs cost more. That connection never waits (busy_timeout 0): a lookup that meets
a lock (a checkpoint restarting the WAL) is asked again in the reader's thread.

Writes go to one writer connection owned by one thread. Concurrent writers queue a plain function
of the connection; one writer task hands every queued function to that thread at once, which
runs them in a single transaction (each in its own savepoint, so one failing operation fails
alone) and commits. Each caller is answered only after COMMIT has returned, so one fsync and one
thread hand-off cover many messages, and the loop never waits for the disk. Relay processes
sharing the file queue on a blocking lock of `PATH.lock` before `BEGIN IMMEDIATE`, which also
serialises them with any other program writing the file.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite

from relay.errors import StoreError
from relay.storage.migrations import SQLITE
from relay.storage.records import SchemaState
from relay.storage.schema import MIN_VERSION, floor_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


T = TypeVar("T")

_GROUP_LIMIT = 256  # operations per transaction
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
)


@dataclass(frozen=True)
class _Failed:
    """An operation of a group that failed (and was rolled back to its savepoint)."""

    error: Exception


_WOULD_WAIT = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _lookup_connection(path: Path) -> sqlite3.Connection:
    """The event loop's read-only connection: autocommit (each lookup sees the last commit)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA busy_timeout=0")
        db.execute("PRAGMA query_only=ON")
    except sqlite3.Error:
        db.close()
        raise
    return db


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def _commit_group(
    db: sqlite3.Connection, operations: list[Callable[[sqlite3.Connection], Any]]
) -> list[Any]:
    """In the writer thread: `operations` in one transaction, each in a savepoint.

    A group of one needs no savepoint: the transaction is its own, rolled back when it fails.
    """
    if len(operations) == 1:
        return [_commit_alone(db, operations[0])]
    outcomes: list[Any] = []
    try:
        db.execute("BEGIN IMMEDIATE")
        for operation in operations:
            db.execute("SAVEPOINT operation")
            try:
                outcomes.append(operation(db))
            except sqlite3.Error as exc:
                db.execute("ROLLBACK TO operation")
                outcomes.append(_Failed(StoreError(f"SQLite: {exc}")))
            except Exception as exc:  # noqa: BLE001 - a bug in one operation fails it alone
                db.execute("ROLLBACK TO operation")
                outcomes.append(_Failed(exc))
            db.execute("RELEASE operation")
        _commit(db)
    except sqlite3.Error as exc:
        with suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise StoreError(f"SQLite: {exc}") from exc
    return outcomes


def _commit_alone(db: sqlite3.Connection, operation: Callable[[sqlite3.Connection], Any]) -> Any:  # noqa: ANN401 - the operation's own result
    """In the writer thread: one operation in its own transaction (see _commit_group)."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise StoreError(f"SQLite: {exc}") from exc
    try:
        outcome = operation(db)
    except Exception as exc:  # noqa: BLE001 - as in a group: the operation fails, not the writer
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as rollback:
            raise StoreError(f"SQLite: {rollback}") from rollback
        error = StoreError(f"SQLite: {exc}") if isinstance(exc, sqlite3.Error) else exc
        return _Failed(error)
    _commit(db)
    return outcome


def _commit(db: sqlite3.Connection) -> None:
    """COMMIT; if it fails, roll back and raise StoreError."""
    try:
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        with suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise StoreError(f"SQLite: {exc}") from exc


def _migrate(db: sqlite3.Connection) -> None:
    """In the writer thread: apply every migration not yet applied, in one transaction."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            for version, script in SQLITE:
                if version in done:
                    continue
                for statement in _statements(script):
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
                done.add(version)
            recorded = db.execute(
                "SELECT value FROM schema_info WHERE key = ?", (MIN_VERSION,)
            ).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO schema_info (key, value) VALUES (?, ?)",
                (MIN_VERSION, floor_of(done, recorded[0] if recorded else None)),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"SQLite: {exc}") from exc


class SqliteCore:
    """The `Store` on a SQLite file."""

    def __init__(self, path: str) -> None:
        """Use the database file at `path` (created on `open`)."""
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None  # the writer's, used in its thread only
        self._thread: ThreadPoolExecutor | None = None
        self._reader: aiosqlite.Connection | None = None
        self._looker: sqlite3.Connection | None = None  # the event loop's (see _lookup)
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._lock_file: int | None = None  # a descriptor of PATH.lock (see _locked_commit)
        self._nothing_due = False  # the last delivery claim found nothing (see SqliteSpool.claim)

    async def _in_writer(self, function: Callable[..., T], *args: Any) -> T:  # noqa: ANN401
        """Run `function(*args)` in the writer's thread."""
        if self._thread is None:
            raise StoreError("the store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            for pragma in _PRAGMAS:
                db.execute(pragma)
        except sqlite3.Error:
            db.close()
            raise
        return db

    async def open(self) -> None:
        """Open the file (creating its folder) and set durable pragmas."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc.strerror}") from exc
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        try:
            lock_path = self.path.with_name(self.path.name + ".lock")
            self._lock_file = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            await self.close()
            raise StoreError(f"cannot open {lock_path}: {exc.strerror}") from exc
        try:
            self._db = await self._in_writer(self._connect)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        pending = aiosqlite.connect(self.path, isolation_level=None)
        try:
            # Reads use a second connection: in WAL mode they never wait for a writer.
            reader = await pending
        except (OSError, sqlite3.Error) as exc:
            # aiosqlite stops its worker thread after a failed connect without waiting;
            # wait here, so the thread never reports to an event loop that has closed.
            await asyncio.to_thread(pending._thread.join, 5)  # noqa: SLF001
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        try:
            await reader.execute("PRAGMA busy_timeout=10000")
            await reader.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            await reader.close()
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._reader = reader
        try:
            self._looker = _lookup_connection(self.path)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc

    async def close(self) -> None:
        """Finish queued writes, then close the connections."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._looker is not None:
            self._looker.close()
            self._looker = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._db is not None:
            await self._in_writer(self._db.close)
            self._db = None
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    async def _write(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run `operation` in the next group transaction; return once it is committed."""
        if self._db is None:
            raise StoreError("the store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((operation, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return await future

    async def _commit(self, operations: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        if self._db is None:
            raise StoreError("the store is not open")
        return await self._in_writer(self._locked_commit, self._db, operations)

    def _locked_commit(
        self, db: sqlite3.Connection, operations: list[Callable[[sqlite3.Connection], Any]]
    ) -> list[Any]:
        """In the writer thread: the group under the processes' shared writer lock.

        Relay processes sharing the file queue on a blocking lock of `PATH.lock` before BEGIN
        IMMEDIATE, so the next writer starts the moment the last one commits; SQLite's own busy
        handler would poll with sleeps of up to 100 ms instead. Other programs that open the file
        (the CLI) still meet SQLite's lock and wait on busy_timeout.
        """
        if self._lock_file is None:
            return _commit_group(db, operations)
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            return _commit_group(db, operations)
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:_GROUP_LIMIT], self._queue[_GROUP_LIMIT:]
            try:
                outcomes = await self._commit([operation for operation, _ in batch])
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

    async def _fetch(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        if self._reader is None:
            raise StoreError("the store is not open")
        # One call in the reader's thread runs the statement to its end: interleaved cursors of
        # concurrent readers would keep one read transaction open, and with it a stale snapshot.
        try:
            return list(await self._reader.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc

    async def _lookup(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        """A point lookup by an index, on the event loop; in the reader's thread if it would wait.

        Only for statements that find their rows by an index (one row, or one per recipient of
        a transaction, 500 at most): the loop runs nothing else meanwhile.
        """
        if self._looker is None:
            raise StoreError("the store is not open")
        try:
            return self._looker.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _WOULD_WAIT:  # BUSY_RECOVERY, BUSY_SNAPSHOT...
                raise StoreError(f"SQLite: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc
        return await self._fetch(sql, params)

    async def migrate(self) -> None:
        """Apply every migration not yet applied."""
        # Asked on the reader first: a schema that is up to date takes no write lock, so a CLI
        # command never waits for a busy relay just to find there is nothing to migrate.
        with suppress(StoreError):
            rows = await self._fetch("SELECT version FROM schema_migrations")
            if {row[0] for row in rows} >= {version for version, _ in SQLITE}:
                return
        if self._db is None:
            raise StoreError("the store is not open")
        await self._in_writer(_migrate, self._db)

    async def backup(self, target: Path) -> int:
        """Copy the database to `target` with SQLite's online backup API; its size in bytes.

        One step, in one read transaction: a consistent snapshot of every committed
        transaction, while this and other processes go on writing (WAL). The copy is written
        beside `target`, checked (`PRAGMA quick_check`), flushed to disk, then renamed into
        place: `target` is never a half-written file.
        """

        def copy() -> int:
            part = target.with_name(target.name + ".part")
            part.unlink(missing_ok=True)
            source = self._connect()
            try:
                copied = sqlite3.connect(part)
                try:
                    source.backup(copied)
                    (check,) = copied.execute("PRAGMA quick_check").fetchone()
                    if check != "ok":
                        raise StoreError(f"the copy fails its check: {check}")
                finally:
                    copied.close()
                with part.open("rb") as written:
                    os.fsync(written.fileno())
                part.replace(target)
                folder = os.open(target.parent, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
                return target.stat().st_size
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite backup: {exc}") from exc
            finally:
                source.close()
                part.unlink(missing_ok=True)

        return await asyncio.to_thread(copy)

    async def schema_state(self) -> SchemaState:
        """The migration steps applied and the oldest release the schema allows."""
        tables = {
            row[0]
            for row in await self._fetch(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name IN ('schema_migrations', 'schema_info')"
            )
        }
        applied: set[int] = set()
        floor = None
        if "schema_migrations" in tables:
            applied = {row[0] for row in await self._fetch("SELECT version FROM schema_migrations")}
        if "schema_info" in tables:
            rows = await self._fetch("SELECT value FROM schema_info WHERE key = ?", (MIN_VERSION,))
            floor = rows[0][0] if rows else None
        return SchemaState(frozenset(applied), tuple(v for v, _ in SQLITE), floor)

    async def ping(self) -> None:
        """Run a trivial query."""
        await self._fetch("SELECT 1")
