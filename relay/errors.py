"""The exceptions optin-relay raises, translated from foreign ones at each boundary.

RelayError
├── ConfigError     the configuration is invalid (carries every problem with its location)
├── StoreError      the storage backend failed; callers answer with a temporary failure
│   └── SchemaError the schema and this release do not go together (too old, or not migrated)
└── CursorError     an events cursor the store never issued (malformed, or past the feed)

The upstream's refusals are not exceptions: `relay.delivery.upstream` turns them into
`SendResult` values.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class of every error optin-relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration cannot be used; `problems` lists each one as `location: message`."""

    def __init__(self, problems: list[str]) -> None:
        """Carry `problems`, each `location: message`."""
        super().__init__("; ".join(problems))
        self.problems = problems


class StoreError(RelayError):
    """The storage backend could not complete an operation."""


class SchemaError(StoreError):
    """This release may not run on the store's schema until someone acts (upgrade, migrate)."""


class CursorError(RelayError):
    """An events cursor that the store never issued: malformed, or past the end of the feed."""
