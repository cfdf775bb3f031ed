"""One view of the cluster: every relay process on the store, what it holds, and what waits.

Each process writes a heartbeat to the store every HEARTBEAT seconds (`nodes`: host, pid,
release, start, listeners) and its clean stop. `read_status` puts together what an operator asks
first: the processes heard from in the last hour (one silent for MISSING_AFTER is `missing`:
crashed, or cut off from the database), the leases each holds, the queue by state with its
oldest message, each webhook endpoint's lag, and the schema. `optin-relay status`,
`/healthz?verbose` and the Prometheus gauges all show this one snapshot.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from relay import __version__
from relay.clock import to_datetime
from relay.metrics import NODES, QUEUE_RECIPIENTS, SCHEMA_PENDING, WEBHOOK_BEHIND, WEBHOOK_OLDEST
from relay.storage.records import NodeRecord

if TYPE_CHECKING:
    from relay.config import Config
    from relay.storage.base import Store
    from relay.storage.records import SchemaState, WebhookState

HEARTBEAT = 10.0  # seconds between a process's heartbeats
MISSING_AFTER = 3 * HEARTBEAT  # silent this long: missing
SEEN_WITHIN = 3600.0  # processes heard from within this long are listed

NodeState = Literal["running", "missing", "stopped"]


def this_node(node_id: str, listeners: list[str], *, started_at: float, now: float) -> NodeRecord:
    """The heartbeat of this process."""
    return NodeRecord(
        id=node_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        version=__version__,
        started_at=started_at,
        heartbeat_at=now,
        stopped_at=None,
        listeners=tuple(listeners),
    )


@dataclass(frozen=True)
class NodeView:
    """A process as `status` shows it."""

    id: str
    host: str
    pid: int
    version: str
    started_at: float
    heartbeat_at: float
    state: NodeState
    listeners: tuple[str, ...]
    leased_recipients: int
    leased_endpoints: int


@dataclass(frozen=True)
class QueueView:
    """Pending recipients in one queue state."""

    state: str  # queued, active, deferred, held
    recipients: int
    oldest_age: float  # seconds since the oldest of their messages arrived


@dataclass(frozen=True)
class EndpointView:
    """A webhook endpoint's place in its account's feed."""

    account_id: str
    url: str
    state: str  # ok, failing, disabled
    behind: int  # events not delivered yet
    oldest_waiting: float | None  # seconds the oldest of them has waited
    lease_holder: str | None  # the node serving it now


@dataclass(frozen=True)
class ClusterStatus:
    """The snapshot `status` prints."""

    at: float
    release: str  # of the process that read it
    schema_steps: int
    schema_pending: list[int]
    schema_min_version: str | None
    nodes: list[NodeView]
    queue: list[QueueView]
    webhooks: list[EndpointView]

    @property
    def oldest_undelivered(self) -> float | None:
        """Seconds since the oldest message with a recipient still pending arrived."""
        return max((q.oldest_age for q in self.queue), default=None)

    def as_json(self) -> dict[str, Any]:
        """The snapshot as JSON (times as ISO 8601, ages in seconds)."""
        data = asdict(self)
        data["at"] = _iso(self.at)
        data["oldest_undelivered_seconds"] = self.oldest_undelivered
        for node in data["nodes"]:
            node["started_at"] = _iso(node["started_at"])
            node["heartbeat_at"] = _iso(node["heartbeat_at"])
        return data


def _iso(moment: float) -> str:
    return to_datetime(moment).isoformat(timespec="seconds")


def _node_state(node: NodeRecord, now: float) -> NodeState:
    if node.stopped_at is not None:
        return "stopped"
    return "missing" if now - node.heartbeat_at > MISSING_AFTER else "running"


async def read_status(
    store: Store, config: Config, schema: SchemaState, now: float
) -> ClusterStatus:
    """Everything `status` shows, read from `store` at `now`."""
    from relay.delivery.webhooks import endpoint_key  # noqa: PLC0415 - aiohttp: only when asked

    held = await store.leases_by_node(now)
    nodes = [
        NodeView(
            id=node.id,
            host=node.host,
            pid=node.pid,
            version=node.version,
            started_at=node.started_at,
            heartbeat_at=node.heartbeat_at,
            state=_node_state(node, now),
            listeners=node.listeners,
            leased_recipients=held.get(node.id, (0, 0))[0],
            leased_endpoints=held.get(node.id, (0, 0))[1],
        )
        for node in await store.nodes(now - SEEN_WITHIN)
    ]
    queue = [
        QueueView(state, count, max(0.0, now - oldest))
        for state, (count, oldest) in sorted((await store.queue_summary(now)).items())
    ]
    states = {state.key: state for state in await store.webhook_states()}
    endpoints = []
    for account in config.accounts:
        for hook in account.webhooks:
            state = states.get(endpoint_key(account.id, hook.url))
            cursor = state.cursor if state is not None else None
            behind, oldest = await store.events_behind(account.id, cursor)
            endpoints.append(
                EndpointView(
                    account_id=account.id,
                    url=hook.url,
                    state=_endpoint_state(state),
                    behind=behind,
                    oldest_waiting=None if oldest is None else max(0.0, now - oldest),
                    lease_holder=(
                        state.lease.split(":", 1)[0]
                        if state is not None and state.lease and state.lease_until > now
                        else None
                    ),
                )
            )
    return ClusterStatus(
        at=now,
        release=__version__,
        schema_steps=len(schema.applied),
        schema_pending=schema.pending,
        schema_min_version=schema.min_version,
        nodes=nodes,
        queue=queue,
        webhooks=endpoints,
    )


def _endpoint_state(state: WebhookState | None) -> str:
    if state is None:
        return "new"
    if state.disabled_at is not None:
        return "disabled"
    return "failing" if state.failing_since is not None else "ok"


def render(status: ClusterStatus) -> str:
    """The snapshot as text, for a terminal."""
    lines = [
        f"release {status.release}; schema: {status.schema_steps} steps, runs on"
        f" {status.schema_min_version or '-'} or later"
        + (f", {len(status.schema_pending)} pending" if status.schema_pending else ""),
        "",
        "node\thost\tpid\tversion\tstarted\theartbeat\tstate\tleases\tlisteners",
    ]
    lines += [
        f"{node.id}\t{node.host}\t{node.pid}\t{node.version}\t{_iso(node.started_at)}"
        f"\t{status.at - node.heartbeat_at:.0f}s ago\t{node.state}"
        f"\t{node.leased_recipients} recipients, {node.leased_endpoints} webhooks"
        f"\t{' '.join(node.listeners)}"
        for node in status.nodes
    ]
    lines += ["", "queue\trecipients\toldest"]
    lines += [f"{q.state}\t{q.recipients}\t{q.oldest_age:.0f}s" for q in status.queue]
    oldest = status.oldest_undelivered
    lines.append(f"oldest undelivered: {'-' if oldest is None else f'{oldest:.0f}s'}")
    lines += ["", "account\twebhook\tstate\tbehind\toldest_waiting\tserved_by"]
    lines += [
        f"{w.account_id}\t{w.url}\t{w.state}\t{w.behind}"
        f"\t{'-' if w.oldest_waiting is None else f'{w.oldest_waiting:.0f}s'}"
        f"\t{w.lease_holder or '-'}"
        for w in status.webhooks
    ]
    return "\n".join(lines)


def show_metrics(status: ClusterStatus) -> None:
    """Set the cluster gauges from one snapshot (series that went away are dropped)."""
    NODES.clear()
    for state in ("running", "missing", "stopped"):
        NODES.labels(state).set(sum(node.state == state for node in status.nodes))
    QUEUE_RECIPIENTS.clear()
    for state in ("queued", "active", "deferred", "held"):
        QUEUE_RECIPIENTS.labels(state).set(
            sum(q.recipients for q in status.queue if q.state == state)
        )
    WEBHOOK_BEHIND.clear()
    WEBHOOK_OLDEST.clear()
    for account in {w.account_id for w in status.webhooks}:
        mine = [w for w in status.webhooks if w.account_id == account]
        WEBHOOK_BEHIND.labels(account).set(sum(w.behind for w in mine))
        WEBHOOK_OLDEST.labels(account).set(max(w.oldest_waiting or 0.0 for w in mine))
    SCHEMA_PENDING.set(len(status.schema_pending))
