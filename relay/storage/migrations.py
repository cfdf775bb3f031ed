"""Schema migrations, one numbered step per change, in each backend's dialect.

Steps 1-6 are written out per dialect; from step 7 on, one text serves both, with the column
types filled in per dialect (`_TYPES`).
"""

from __future__ import annotations

from relay.storage.pgsteps import STEP_9, STEP_16, STEP_20, STEP_21, STEP_22

# What each step adds, for `optin-relay migrate --check` and `status`.
STEPS: dict[int, str] = {
    1: "the spool: messages, recipients and their leases",
    2: "suppressions and their audit trail, campaign sends, account flags",
    3: "account states and their history",
    4: "consent records, windowed events",
    5: "windowed counters",
    6: "campaign_sends dropped (replaced by windowed counters)",
    7: "complaint cases and their history, account statistics",
    8: "consent history, subscriptions",
    9: "window_add(): a windowed counter in one round trip (PostgreSQL)",
    10: "suppressions matched by their canonical key",
    11: "the events feed",
    12: "webhook endpoints' places in the feed",
    13: "queue actions, the journal, held messages",
    14: "repeated sends of a campaign to a recipient",
    15: "terms of use: versions and acceptances",
    16: "window_add_all(): several windowed counters at once (PostgreSQL)",
    17: "messages.dsn, recipients.dsn: what senders asked of DSNs (RFC 3461)",
    18: "schema_info: the oldest release that may run on the schema",
    19: "nodes: the relay processes on the store and their heartbeats",
    20: "claim_recipients(): the delivery claim, planned to walk the queue in order (PostgreSQL)",
    21: "window_apply(): the windowed counters of concurrent sessions in one round trip"
    " (PostgreSQL)",
    22: "recipients_pending replaces recipients_due: an index of the queue alone, built"
    " concurrently (PostgreSQL)",
    23: "domain_checks: what DNS proved about each account's sending domains",
}
# Steps PostgreSQL runs outside a transaction, one statement at a time, while another
# connection holds the migration lock: indexes built and dropped CONCURRENTLY, so the spool
# keeps taking writes while they build. Each such step starts by dropping what a failed
# attempt may have left (an invalid index).
CONCURRENT: frozenset[int] = frozenset({22})
# The oldest release that may run on a schema with the step applied: a step that only adds
# keeps the floor of the steps before it (expand/contract, see relay.storage.schema).
FLOORS: dict[int, str] = dict.fromkeys(STEPS, "0.1.0")

_TYPES = {
    "SQLITE": {"real": "REAL", "blob": "BLOB", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "POSTGRES": {"real": "DOUBLE PRECISION", "blob": "BYTEA", "serial": "BIGSERIAL PRIMARY KEY"},
}
_SHARED: dict[int, str] = {
    7: """
        CREATE TABLE cases (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL,
            recipient TEXT NOT NULL,
            reference TEXT NOT NULL,
            message_id TEXT,
            source TEXT NOT NULL,
            feedback_type TEXT NOT NULL,
            report {blob} NOT NULL,
            status TEXT NOT NULL,
            opened_at {real} NOT NULL,
            deadline {real} NOT NULL,
            updated_at {real} NOT NULL,
            resolved_at {real},
            resolution TEXT,
            fine_cents INTEGER NOT NULL DEFAULT 0,
            proof TEXT,
            evidence TEXT,
            appealed_at {real},
            UNIQUE (account_id, recipient, reference)
        );
        CREATE INDEX cases_due ON cases (status, deadline);
        CREATE INDEX cases_account ON cases (account_id, opened_at);
        CREATE TABLE case_events (
            id {serial},
            case_id TEXT NOT NULL,
            action TEXT NOT NULL,
            status TEXT NOT NULL,
            detail TEXT NOT NULL,
            actor TEXT NOT NULL,
            at {real} NOT NULL
        );
        CREATE INDEX case_events_case ON case_events (case_id, id);
        CREATE TABLE account_stats (
            account_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            bucket {real} NOT NULL,
            count BIGINT NOT NULL,
            PRIMARY KEY (account_id, kind, bucket)
        );
        """,
    8: """
        ALTER TABLE consents ADD COLUMN withdrawn_how TEXT;
        CREATE TABLE consent_history (
            account_id TEXT NOT NULL,
            address TEXT NOT NULL,
            list_id TEXT NOT NULL,
            method TEXT NOT NULL,
            subscribed_at {real} NOT NULL,
            confirmed_at {real},
            source TEXT NOT NULL,
            ip TEXT,
            user_agent TEXT,
            consent_text_version TEXT,
            evidence TEXT,
            withdrawn_at {real},
            withdrawn_how TEXT,
            archived_at {real} NOT NULL
        );
        CREATE INDEX consent_history_address ON consent_history (account_id, address);
        CREATE TABLE subscriptions (
            token_hash TEXT PRIMARY KEY,
            account_id TEXT NOT NULL,
            list_id TEXT NOT NULL,
            address TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at {real} NOT NULL,
            expires_at {real} NOT NULL,
            ip TEXT,
            user_agent TEXT,
            form_url TEXT NOT NULL,
            consent_text_version TEXT NOT NULL,
            consent_text TEXT NOT NULL,
            confirmed_at {real},
            confirm_ip TEXT,
            confirm_user_agent TEXT
        );
        CREATE INDEX subscriptions_address ON subscriptions (account_id, address);
        """,
    # Suppressions match re-spellings of one mailbox (`suppression_key`). Rows from before keep
    # their address as key: they match that spelling and everything whose key it is.
    10: """
        ALTER TABLE suppressions ADD COLUMN match_key TEXT;
        UPDATE suppressions SET match_key = address;
        CREATE INDEX suppressions_match ON suppressions (match_key, scope);
        """,
    # Where each webhook endpoint is in its account's event feed, and how it is failing.
    12: """
        CREATE TABLE webhook_state (
            key TEXT PRIMARY KEY,
            account_id TEXT NOT NULL,
            url TEXT NOT NULL,
            cursor TEXT,
            delivered INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt {real} NOT NULL DEFAULT 0,
            failing_since {real},
            disabled_at {real},
            last_error TEXT,
            lease TEXT,
            lease_until {real} NOT NULL DEFAULT 0
        );
        """,
    # Operators' tools: messages on hold, the audit trail of queue changes, and the journal of
    # every decision about a message (relay.journal), for explain and policy replay.
    13: """
        ALTER TABLE messages ADD COLUMN held_at {real};
        CREATE TABLE queue_actions (
            id {serial},
            at {real} NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            reason TEXT,
            message_id TEXT,
            account_id TEXT,
            count INTEGER NOT NULL
        );
        CREATE INDEX queue_actions_message ON queue_actions (message_id);
        CREATE TABLE journal (
            id {serial},
            at {real} NOT NULL,
            message_id TEXT NOT NULL,
            account_id TEXT,
            kind TEXT NOT NULL,
            recipient TEXT,
            detail TEXT NOT NULL
        );
        CREATE INDEX journal_message ON journal (message_id);
        CREATE INDEX journal_at ON journal (at);
        CREATE INDEX journal_recipient ON journal (recipient, at);
        CREATE INDEX events_message ON events (message_id);
        CREATE INDEX events_feedback ON events (recipient, account_id) WHERE type IN
            ('recipient.unsubscribed', 'recipient.complained', 'recipient.bounced');
        """,
    # Each copy of a campaign sent to a recipient, for the repeated-sends policy.
    14: """
        CREATE TABLE repeat_sends (
            account_id TEXT NOT NULL,
            campaign TEXT NOT NULL,
            recipient TEXT NOT NULL,
            at {real} NOT NULL
        );
        CREATE INDEX repeat_sends_key ON repeat_sends (account_id, campaign, recipient, at);
        CREATE INDEX repeat_sends_at ON repeat_sends (at);
        """,
    # Terms of use: which versions each account accepted, when, by whom; when each took effect.
    15: """
        CREATE TABLE terms_acceptances (
            account_id TEXT NOT NULL,
            version TEXT NOT NULL,
            accepted_at {real} NOT NULL,
            accepted_by TEXT NOT NULL,
            ip TEXT,
            user_agent TEXT,
            PRIMARY KEY (account_id, version)
        );
        CREATE TABLE terms_versions (
            version TEXT PRIMARY KEY,
            published_at {real} NOT NULL
        );
        """,
    # The DSN extension (RFC 3461): what the sender asked, as sent (NULL: nothing asked).
    17: """
        ALTER TABLE messages ADD COLUMN dsn TEXT;
        ALTER TABLE recipients ADD COLUMN dsn TEXT;
        """,
    # `min_version`: the oldest release that may run on the schema (relay.storage.schema).
    18: """
        CREATE TABLE schema_info (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """,
    # The relay processes using the store (relay.cluster): `id` is a process's delivery worker
    # id, which prefixes its leases; `listeners` a JSON list of its addresses.
    19: """
        CREATE TABLE nodes (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            version TEXT NOT NULL,
            started_at {real} NOT NULL,
            heartbeat_at {real} NOT NULL,
            stopped_at {real},
            listeners TEXT NOT NULL
        );
        """,
    23: """
        CREATE TABLE domain_checks (
            account_id TEXT NOT NULL,
            domain TEXT NOT NULL,
            status TEXT NOT NULL,
            requirements TEXT NOT NULL,
            checked_at {real} NOT NULL,
            settled TEXT NOT NULL,
            settled_at {real},
            PRIMARY KEY (account_id, domain)
        );
        """,
}


def _shared(version: int, dialect: str) -> tuple[int, str]:
    """Shared step `version` in `dialect`."""
    return version, _SHARED[version].format(**_TYPES[dialect])


SQLITE: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            account_id TEXT,
            mail_from TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'message',
            content BLOB,
            size INTEGER NOT NULL,
            received_at REAL NOT NULL,
            completed_at REAL
        );
        CREATE TABLE recipients (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            rcpt TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL,
            lease TEXT,
            lease_until REAL NOT NULL DEFAULT 0,
            last_reply TEXT,
            updated_at REAL NOT NULL
        );
        CREATE INDEX recipients_due ON recipients (status, next_attempt);
        CREATE INDEX recipients_message ON recipients (message_id);
        CREATE INDEX recipients_lease ON recipients (lease);
        """,
    ),
    (
        2,
        """
        ALTER TABLE messages ADD COLUMN campaign TEXT;
        CREATE TABLE suppressions (
            address TEXT NOT NULL,
            scope TEXT NOT NULL,
            reason TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (address, scope)
        ) WITHOUT ROWID;
        CREATE TABLE suppression_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            address TEXT NOT NULL,
            scope TEXT NOT NULL,
            action TEXT NOT NULL,
            reason TEXT NOT NULL,
            actor TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX suppression_audit_address ON suppression_audit (address);
        CREATE TABLE campaign_sends (
            account_id TEXT NOT NULL,
            campaign TEXT NOT NULL,
            recipients INTEGER NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX campaign_sends_key ON campaign_sends (account_id, campaign, at);
        CREATE TABLE account_flags (
            account_id TEXT NOT NULL,
            flag TEXT NOT NULL,
            reason TEXT NOT NULL,
            set_at REAL NOT NULL,
            PRIMARY KEY (account_id, flag)
        );
        """,
    ),
    (
        3,
        """
        CREATE TABLE account_states (
            account_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            reason TEXT NOT NULL,
            actor TEXT NOT NULL,
            changed_at REAL NOT NULL
        );
        CREATE TABLE account_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            account_id TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL,
            actor TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX account_events_account ON account_events (account_id, id);
        CREATE INDEX messages_account ON messages (account_id);
        """,
    ),
    (
        4,
        """
        CREATE TABLE consents (
            account_id TEXT NOT NULL,
            address TEXT NOT NULL,
            list_id TEXT NOT NULL,
            method TEXT NOT NULL,
            subscribed_at REAL NOT NULL,
            confirmed_at REAL,
            source TEXT NOT NULL,
            ip TEXT,
            user_agent TEXT,
            consent_text_version TEXT,
            evidence TEXT,
            withdrawn_at REAL,
            PRIMARY KEY (account_id, address, list_id)
        );
        CREATE INDEX consents_address ON consents (address);
        CREATE TABLE window_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            account_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            item TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX window_events_key ON window_events (account_id, kind, at);
        """,
    ),
    (
        5,
        """
        CREATE TABLE window_counts (
            account_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            bucket REAL NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (account_id, kind, bucket)
        );
        """,
    ),
    (
        6,
        "DROP TABLE campaign_sends",  # campaign sizes live in window_counts since migration 5
    ),
    _shared(7, "SQLITE"),
    _shared(8, "SQLITE"),
    _shared(10, "SQLITE"),  # step 9 is PostgreSQL's window_add function
    (
        11,
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            account_id TEXT NOT NULL,
            type TEXT NOT NULL,
            at REAL NOT NULL,
            message_id TEXT,
            recipient TEXT,
            data TEXT NOT NULL
        );
        CREATE INDEX events_account ON events (account_id, seq);
        """,
    ),
    _shared(12, "SQLITE"),
    _shared(13, "SQLITE"),
    _shared(14, "SQLITE"),
    _shared(15, "SQLITE"),
    _shared(17, "SQLITE"),
    _shared(18, "SQLITE"),
    _shared(19, "SQLITE"),
    _shared(23, "SQLITE"),
]

POSTGRES: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            account_id TEXT,
            mail_from TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'message',
            content BYTEA,
            size INTEGER NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            completed_at DOUBLE PRECISION
        );
        CREATE TABLE recipients (
            id BIGSERIAL PRIMARY KEY,
            message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            rcpt TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt DOUBLE PRECISION NOT NULL,
            lease TEXT,
            lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_reply TEXT,
            updated_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX recipients_due ON recipients (status, next_attempt);
        CREATE INDEX recipients_message ON recipients (message_id);
        CREATE INDEX recipients_lease ON recipients (lease);
        """,
    ),
    (
        2,
        """
        ALTER TABLE messages ADD COLUMN campaign TEXT;
        CREATE TABLE suppressions (
            address TEXT NOT NULL,
            scope TEXT NOT NULL,
            reason TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (address, scope)
        );
        CREATE TABLE suppression_audit (
            id BIGSERIAL PRIMARY KEY,
            address TEXT NOT NULL,
            scope TEXT NOT NULL,
            action TEXT NOT NULL,
            reason TEXT NOT NULL,
            actor TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX suppression_audit_address ON suppression_audit (address);
        CREATE TABLE campaign_sends (
            account_id TEXT NOT NULL,
            campaign TEXT NOT NULL,
            recipients INTEGER NOT NULL,
            at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX campaign_sends_key ON campaign_sends (account_id, campaign, at);
        CREATE TABLE account_flags (
            account_id TEXT NOT NULL,
            flag TEXT NOT NULL,
            reason TEXT NOT NULL,
            set_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (account_id, flag)
        );
        """,
    ),
    (
        3,
        """
        CREATE TABLE account_states (
            account_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            reason TEXT NOT NULL,
            actor TEXT NOT NULL,
            changed_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE account_events (
            id BIGSERIAL PRIMARY KEY,
            account_id TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL,
            actor TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX account_events_account ON account_events (account_id, id);
        CREATE INDEX messages_account ON messages (account_id);
        """,
    ),
    (
        4,
        """
        CREATE TABLE consents (
            account_id TEXT NOT NULL,
            address TEXT NOT NULL,
            list_id TEXT NOT NULL,
            method TEXT NOT NULL,
            subscribed_at DOUBLE PRECISION NOT NULL,
            confirmed_at DOUBLE PRECISION,
            source TEXT NOT NULL,
            ip TEXT,
            user_agent TEXT,
            consent_text_version TEXT,
            evidence TEXT,
            withdrawn_at DOUBLE PRECISION,
            PRIMARY KEY (account_id, address, list_id)
        );
        CREATE INDEX consents_address ON consents (address);
        CREATE TABLE window_events (
            id BIGSERIAL PRIMARY KEY,
            account_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            item TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX window_events_key ON window_events (account_id, kind, at);
        """,
    ),
    (
        5,
        """
        CREATE TABLE window_counts (
            account_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            bucket DOUBLE PRECISION NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (account_id, kind, bucket)
        );
        """,
    ),
    (
        6,
        "DROP TABLE campaign_sends",  # campaign sizes live in window_counts since migration 5
    ),
    _shared(7, "POSTGRES"),
    _shared(8, "POSTGRES"),
    (9, STEP_9),
    _shared(10, "POSTGRES"),
    (
        11,
        # `txid` orders events across nodes: sequence values are taken before commit, so a
        # reader pages by (txid, seq) and only below the oldest transaction still running.
        """
        CREATE TABLE events (
            seq BIGSERIAL PRIMARY KEY,
            txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
            id TEXT NOT NULL UNIQUE,
            account_id TEXT NOT NULL,
            type TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            message_id TEXT,
            recipient TEXT,
            data TEXT NOT NULL
        );
        CREATE INDEX events_account ON events (account_id, txid, seq);
        """,
    ),
    _shared(12, "POSTGRES"),
    _shared(13, "POSTGRES"),
    _shared(14, "POSTGRES"),
    _shared(15, "POSTGRES"),
    (16, STEP_16),
    _shared(17, "POSTGRES"),
    _shared(18, "POSTGRES"),
    _shared(19, "POSTGRES"),
    (20, STEP_20),
    (21, STEP_21),
    (22, STEP_22),
    _shared(23, "POSTGRES"),
]
