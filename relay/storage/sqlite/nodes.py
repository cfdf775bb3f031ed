"""SQLite backend: the relay processes on the store, their heartbeats and what each holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.storage.records import NODE_COLUMNS, NodeRecord
from relay.storage.sqlite.core import SqliteCore

if TYPE_CHECKING:
    import sqlite3

FORGET_AFTER = 7 * 86400.0  # seconds without a heartbeat before a process is forgotten

# The node id of a lease (`ID:N` for recipients, `ID:KEY:NS` for webhook endpoints).
_HOLDER = "substr(lease, 1, instr(lease, ':') - 1)"


class SqliteNodes(SqliteCore):
    """The nodes part of `SqliteStore`."""

    async def node_heartbeat(self, node: NodeRecord) -> None:
        """Upsert the process's row; forget those silent for a week."""

        def operation(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT OR REPLACE INTO nodes ({NODE_COLUMNS})"  # noqa: S608 - column names only
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                node.row(),
            )
            db.execute(
                "DELETE FROM nodes WHERE heartbeat_at < ?", (node.heartbeat_at - FORGET_AFTER,)
            )

        await self._write(operation)

    async def nodes(self, since: float) -> list[NodeRecord]:
        """The processes heard from since `since`."""
        rows = await self._fetch(
            f"SELECT {NODE_COLUMNS} FROM nodes WHERE heartbeat_at >= ?"  # noqa: S608
            " ORDER BY started_at, id",
            (since,),
        )
        return [NodeRecord.from_row(row) for row in rows]

    async def leases_by_node(self, now: float) -> dict[str, tuple[int, int]]:
        """Recipients and webhook endpoints leased at `now`, per holder."""
        recipients = await self._fetch(
            f"SELECT {_HOLDER}, COUNT(*) FROM recipients WHERE lease IS NOT NULL"  # noqa: S608
            " AND status = 'pending' AND lease_until > ? GROUP BY 1",
            (now,),
        )
        endpoints = await self._fetch(
            f"SELECT {_HOLDER}, COUNT(*) FROM webhook_state WHERE lease IS NOT NULL"  # noqa: S608
            " AND lease_until > ? GROUP BY 1",
            (now,),
        )
        held: dict[str, tuple[int, int]] = {str(n): (int(c), 0) for n, c in recipients}
        for node, count in endpoints:
            held[str(node)] = (held.get(str(node), (0, 0))[0], int(count))
        return held
