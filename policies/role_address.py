"""Role addresses (abuse@, postmaster@, noreply@, ...) get no marketing mail.

A role address reaches a team or a machine, not a person who subscribed: nobody there gave
consent for everyone who reads it, mail to it draws complaints, and blocklists watch such
addresses. Recipients whose local part (before any `+tag`) is in `local_parts` get 550 5.7.1 at
RCPT from the accounts whose stream is in `streams` (marketing by default); transactional mail
to them (an order confirmation to orders@) still passes.

Not required: the policy runs only when the config has a `policies.role_address` section. It
is the worked example of docs/policies.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from relay.policy import CONTINUE, BasePolicy, PolicyServices, Reject, RuleSettings, Verdict

if TYPE_CHECKING:
    from relay.policy import Transaction

ROLES = (
    "abuse",
    "admin",
    "hostmaster",
    "mailer-daemon",
    "no-reply",
    "noc",
    "noreply",
    "postmaster",
    "root",
    "security",
    "webmaster",
)


class Settings(RuleSettings):
    """`policies.role_address`."""

    local_parts: frozenset[str] = Field(
        default=frozenset(ROLES), description="local parts refused (compared in lower case)"
    )
    streams: frozenset[Literal["marketing", "transactional"]] = Field(
        default=frozenset({"marketing"}), description="the account streams the rule applies to"
    )


class Policy(BasePolicy):
    """Refuses role addresses as recipients of the configured streams."""

    name = "role_address"
    # A suppressed address is refused as suppressed (the rule the CRM must act on), and a role
    # address never counts toward unsolicited bulk, which the consent policy measures.
    after = ("suppression",)
    before = ("consent",)

    def __init__(self, settings: Settings, services: PolicyServices) -> None:
        """Keep the settings; the policy needs neither the store nor the clock."""
        del services
        self.local_parts = frozenset(part.lower() for part in settings.local_parts)
        self.streams = settings.streams

    async def on_rcpt(self, tx: Transaction, recipient: str) -> Verdict:
        """550 5.7.1 for a role address, when the account's stream is covered."""
        if tx.account.stream not in self.streams:
            return CONTINUE
        local = recipient.rpartition("@")[0].lower().partition("+")[0]
        if local not in self.local_parts:
            return CONTINUE
        return Reject(
            f"<{recipient}> is a role address ({local}@); send marketing mail only to people "
            "who subscribed themselves",
            "role_address.refused",
            facts={"local_part": local},
        )
