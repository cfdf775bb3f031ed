"""The PostgresStore (see relay.storage.postgres.core for how it works)."""

from relay.storage.postgres.accounts import PostgresAccounts
from relay.storage.postgres.domains import PostgresDomains
from relay.storage.postgres.events import PostgresEvents
from relay.storage.postgres.feedback import PostgresFeedback
from relay.storage.postgres.journal import PostgresJournal
from relay.storage.postgres.lists import PostgresLists
from relay.storage.postgres.nodes import PostgresNodes
from relay.storage.postgres.spool import PostgresSpool
from relay.storage.postgres.subscriptions import PostgresSubscriptions


class PostgresStore(
    PostgresSpool,
    PostgresLists,
    PostgresAccounts,
    PostgresFeedback,
    PostgresSubscriptions,
    PostgresEvents,
    PostgresJournal,
    PostgresNodes,
    PostgresDomains,
):
    """The `Store` on PostgreSQL: one class made of its parts."""


__all__ = ["PostgresStore"]
