"""Prometheus metrics, in a registry of optin-relay's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES_ACCEPTED = Counter(
    "optin_relay_messages_accepted", "Messages committed to the spool", registry=REGISTRY
)
REJECTIONS = Counter(
    "optin_relay_rejections",
    "Refused SMTP commands by stage and rule",
    ["stage", "rule"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "optin_relay_deliveries",
    "Delivery attempts by outcome (delivered, deferred, failed)",
    ["outcome"],
    registry=REGISTRY,
)
