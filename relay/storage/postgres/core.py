"""PostgreSQL backend (several relay nodes sharing state) through an asyncpg pool.

Claims use `FOR UPDATE SKIP LOCKED`, so concurrent workers on any node never lease the same
recipient. A `schema` query parameter in the URL selects a schema (created if missing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from relay.errors import StoreError
from relay.storage.migrations import POSTGRES

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager


# Any failure of the driver or the connection becomes a StoreError at this boundary.
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


_MIGRATION_LOCK = 0x6F7074696E  # an arbitrary advisory-lock key for migrations


def _split_schema(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    schema = next((value for key, value in query if key == "schema"), None)
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


class PostgresCore:
    """The `Store` on PostgreSQL."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        """Connect to `url` on `open`."""
        self.url, self.schema = _split_schema(url)
        if self.schema is not None and not self.schema.replace("_", "").isalnum():
            raise ValueError(f"invalid schema name: {self.schema!r}")
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
                self.url, min_size=1, max_size=self.pool_size, server_settings=settings
            )
        except DB_ERRORS as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

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
        """Apply missing migrations under an advisory lock (nodes may start together)."""
        try:
            async with self._acquire() as con, con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                done = {row[0] for row in await con.fetch("SELECT version FROM schema_migrations")}
                for version, script in POSTGRES:
                    if version not in done:
                        await con.execute(script)
                        await con.execute(
                            "INSERT INTO schema_migrations (version) VALUES ($1)", version
                        )
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL migration failed: {exc}") from exc

    async def ping(self) -> None:
        """Run a trivial query."""
        await self._fetch("SELECT 1")
