"""PostgreSQL backend: the relay processes on the store, their heartbeats and what each holds."""

from __future__ import annotations

from relay.storage.postgres.core import PostgresCore
from relay.storage.records import NODE_COLUMNS, NodeRecord

FORGET_AFTER = 7 * 86400.0  # seconds without a heartbeat before a process is forgotten

# The node id of a lease (`ID:N` for recipients, `ID:KEY:NS` for webhook endpoints).
_HOLDER = "split_part(lease, ':', 1)"


class PostgresNodes(PostgresCore):
    """The nodes part of `PostgresStore`."""

    async def node_heartbeat(self, node: NodeRecord) -> None:
        """Upsert the process's row; forget those silent for a week."""
        await self._fetch(
            f"WITH gone AS (DELETE FROM nodes WHERE heartbeat_at < $9)"  # noqa: S608
            f" INSERT INTO nodes ({NODE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            " ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
            " version = excluded.version, started_at = excluded.started_at,"
            " heartbeat_at = excluded.heartbeat_at, stopped_at = excluded.stopped_at,"
            " listeners = excluded.listeners",
            *node.row(),
            node.heartbeat_at - FORGET_AFTER,
        )

    async def nodes(self, since: float) -> list[NodeRecord]:
        """The processes heard from since `since`."""
        rows = await self._fetch(
            f"SELECT {NODE_COLUMNS} FROM nodes WHERE heartbeat_at >= $1"  # noqa: S608
            " ORDER BY started_at, id",
            since,
        )
        return [NodeRecord.from_row(tuple(row)) for row in rows]

    async def leases_by_node(self, now: float) -> dict[str, tuple[int, int]]:
        """Recipients and webhook endpoints leased at `now`, per holder."""
        recipients = await self._fetch(
            f"SELECT {_HOLDER}, COUNT(*) FROM recipients WHERE lease IS NOT NULL"  # noqa: S608
            " AND status = 'pending' AND lease_until > $1 GROUP BY 1",
            now,
        )
        endpoints = await self._fetch(
            f"SELECT {_HOLDER}, COUNT(*) FROM webhook_state WHERE lease IS NOT NULL"  # noqa: S608
            " AND lease_until > $1 GROUP BY 1",
            now,
        )
        held: dict[str, tuple[int, int]] = {str(n): (int(c), 0) for n, c in recipients}
        for node, count in endpoints:
            held[str(node)] = (held.get(str(node), (0, 0))[0], int(count))
        return held
