"""Schema migrations, one numbered step per change, in each backend's dialect."""

from __future__ import annotations

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
]
