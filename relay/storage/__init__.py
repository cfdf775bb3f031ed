"""Storage: one interface (`Store`), two backends chosen by `storage.url`.

Only this package imports database drivers.
"""

from __future__ import annotations

from relay.storage.base import DeliveryJob, NewMessage, QueueEntry, Store


def open_store(url: str) -> Store:
    """Return an (unopened) store for `url`: `sqlite:///path` or `postgresql://...`."""
    if url.startswith("sqlite:///"):
        from relay.storage.sqlite import SqliteStore  # noqa: PLC0415 - load the driver in use only

        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from relay.storage.postgres import PostgresStore  # noqa: PLC0415

        return PostgresStore(url)
    raise ValueError(f"unsupported storage url: {url}")


__all__ = ["DeliveryJob", "NewMessage", "QueueEntry", "Store", "open_store"]
