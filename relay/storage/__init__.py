"""Storage: one interface (`Store`), two backends chosen by `storage.url`.

Only this package imports database drivers.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from relay.storage.base import Store
from relay.storage.records import DeliveryJob, NewMessage, QueueEntry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

# A memory file system for scratch stores where the machine has one (private folders inside).
_SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108


def open_store(url: str) -> Store:
    """Return an (unopened) store for `url`: `sqlite:///path` or `postgresql://...`."""
    if url.startswith("sqlite:///"):
        from relay.storage.sqlite import SqliteStore  # noqa: PLC0415 - load the driver in use only

        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from relay.storage.postgres import PostgresStore  # noqa: PLC0415

        return PostgresStore(url)
    raise ValueError(f"unsupported storage url: {url}")


@asynccontextmanager
async def scratch_store() -> AsyncIterator[Store]:
    """A migrated SQLite store in a private scratch folder (in memory where /dev/shm exists).

    For what must not touch the real store: policy unit tests, `policy replay`'s counters.
    """
    folder = Path(tempfile.mkdtemp(prefix="optin-relay-", dir=_SCRATCH))
    store = open_store(f"sqlite:///{folder}/relay.db")
    try:
        await store.open()
        await store.migrate()
        yield store
    finally:
        await store.close()
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["DeliveryJob", "NewMessage", "QueueEntry", "Store", "open_store", "scratch_store"]
