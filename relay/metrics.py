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

# One view of the cluster (relay.cluster), read from the store at each scrape: every node's
# /metrics says the same, so alert on one series per cluster (max or min over instances).
NODES = Gauge(
    "optin_relay_nodes",
    "Relay processes heard from in the last hour, by state (running, missing, stopped)",
    ["state"],
    registry=REGISTRY,
)
QUEUE_RECIPIENTS = Gauge(
    "optin_relay_queue_recipients",
    "Recipients waiting for delivery, by queue state (queued, active, deferred, held)",
    ["state"],
    registry=REGISTRY,
)
WEBHOOK_BEHIND = Gauge(
    "optin_relay_webhook_events_behind",
    "Events not yet delivered to an account's webhook endpoints (summed over its endpoints)",
    ["account"],
    registry=REGISTRY,
)
WEBHOOK_OLDEST = Gauge(
    "optin_relay_webhook_oldest_waiting_seconds",
    "How long the oldest event not yet delivered to an account's endpoints has waited",
    ["account"],
    registry=REGISTRY,
)
SCHEMA_PENDING = Gauge(
    "optin_relay_schema_pending_steps",
    "Migration steps of this release the schema lacks",
    registry=REGISTRY,
)
CERTIFICATE_EXPIRY = Gauge(
    "optin_relay_tls_certificate_expiry_timestamp_seconds",
    "When the SMTP listeners' TLS certificate expires (Unix time; absent without TLS)",
    registry=REGISTRY,
)
