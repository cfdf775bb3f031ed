"""The SqliteStore (see relay.storage.sqlite.core for how it works)."""

from relay.storage.sqlite.accounts import SqliteAccounts
from relay.storage.sqlite.domains import SqliteDomains
from relay.storage.sqlite.events import SqliteEvents
from relay.storage.sqlite.feedback import SqliteFeedback
from relay.storage.sqlite.journal import SqliteJournal
from relay.storage.sqlite.lists import SqliteLists
from relay.storage.sqlite.nodes import SqliteNodes
from relay.storage.sqlite.spool import SqliteSpool
from relay.storage.sqlite.subscriptions import SqliteSubscriptions


class SqliteStore(
    SqliteSpool,
    SqliteLists,
    SqliteAccounts,
    SqliteFeedback,
    SqliteSubscriptions,
    SqliteEvents,
    SqliteJournal,
    SqliteNodes,
    SqliteDomains,
):
    """The `Store` on SQLite: one class made of its parts."""


__all__ = ["SqliteStore"]
