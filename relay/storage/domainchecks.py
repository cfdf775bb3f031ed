"""What DNS proved about an account's sending domains, as the store keeps it (relay.domains)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

State = Literal["ok", "missing", "failing", "unknown"]
Status = Literal["verified", "failing", "unknown", "pending"]


@dataclass(frozen=True)
class Requirement:
    """One thing the domain must publish: what was found, and the record to publish if not."""

    name: str
    state: State
    found: str
    publish: str | None = None


@dataclass(frozen=True)
class DomainCheck:
    """What the relay concluded about one account's From domain, and when."""

    account_id: str
    domain: str
    status: Status
    requirements: list[Requirement] = field(default_factory=list)
    checked_at: float | None = None
    settled: Status = "pending"  # the last conclusive status: verified or failing
    settled_at: float | None = None

    def requirements_json(self) -> str:
        """The requirements as stored."""
        return json.dumps([asdict(r) for r in self.requirements], separators=(",", ":"))

    @staticmethod
    def requirements_from(text: str) -> list[Requirement]:
        """The stored requirements."""
        return [Requirement(**item) for item in json.loads(text)]

    def after(self, previous: DomainCheck | None) -> DomainCheck:
        """This check as stored: an unknown one keeps what the previous one settled."""
        if self.status in ("verified", "failing"):
            return replace(self, settled=self.status, settled_at=self.checked_at)
        if previous is None:
            return self
        return replace(self, settled=previous.settled, settled_at=previous.settled_at)

    def row(self) -> tuple[object, ...]:
        """The row of `domain_checks`, in DOMAIN_CHECK_COLUMNS order."""
        return (
            self.account_id,
            self.domain,
            self.status,
            self.requirements_json(),
            self.checked_at,
            self.settled,
            self.settled_at,
        )

    @classmethod
    def from_row(cls, row: tuple[object, ...]) -> DomainCheck:
        """The check of a stored row."""
        account_id, domain, status, requirements, checked_at, settled, settled_at = row
        return cls(
            str(account_id),
            str(domain),
            status,  # type: ignore[arg-type]
            cls.requirements_from(str(requirements)),
            float(checked_at),  # type: ignore[arg-type]
            settled,  # type: ignore[arg-type]
            None if settled_at is None else float(settled_at),  # type: ignore[arg-type]
        )


DOMAIN_CHECK_COLUMNS = "account_id, domain, status, requirements, checked_at, settled, settled_at"
