"""Prometheus metrics, in a registry of optin-relay's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

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
POLICY_WOULD_REFUSE = Counter(
    "optin_relay_policy_would_refuse_total",
    "Refusals a policy in monitor mode would have given, by rule",
    ["rule"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "optin_relay_deliveries",
    "Delivery attempts by outcome (delivered, deferred, failed)",
    ["outcome"],
    registry=REGISTRY,
)
FEEDBACK_REPORTS = Counter(
    "optin_relay_feedback_reports",
    "Complaint reports and bounces taken in, by kind (complaint, bounce) and outcome",
    ["kind", "outcome"],
    registry=REGISTRY,
)
CASES = Counter(
    "optin_relay_cases",
    "Complaint cases closed or appealed in this process, by event (dismissed, upheld, appealed)",
    ["event"],
    registry=REGISTRY,
)
SUBSCRIPTIONS = Counter(
    "optin_relay_subscriptions",
    "Confirmed opt-in steps by step (subscribe, confirm) and outcome",
    ["step", "outcome"],
    registry=REGISTRY,
)
CREDENTIAL_CHECKS = Counter(
    "optin_relay_credential_checks",
    "SMTP passwords, API keys and admin tokens checked, by result",
    ["result"],
    registry=REGISTRY,
)
SPOOL_PENDING = Gauge(
    "optin_relay_spool_pending_recipients",
    "Recipients waiting for delivery in the shared spool (read at each scrape)",
    registry=REGISTRY,
)
SPOOL_OLDEST_AGE = Gauge(
    "optin_relay_spool_oldest_pending_age_seconds",
    "Age of the oldest message with a recipient waiting for delivery (0 when none)",
    registry=REGISTRY,
)
