"""Per-account rate limits, kept in the store so every relay process shares one budget.

Messages per hour (at MAIL); recipients per message, recipients per hour and recipients per
destination domain per hour (at RCPT). Over a limit: 451 4.7.0, so the sender retries later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.policy import CONTINUE, Defer, RuleSettings, StorePolicy, Verdict
from relay.storage.records import normalize_address

if TYPE_CHECKING:
    from relay.policy import Transaction

HOUR = 3600.0


class Settings(RuleSettings):
    """`policies.rate_limit` (the limits themselves are per account, in `limits`)."""


class Policy(StorePolicy):
    """451 4.7.0 past an account's limits."""

    name = "rate_limit"
    required = True
    after = ("consent",)  # refused recipients spend none of the budget

    async def on_mail(self, tx: Transaction) -> Verdict:
        """Messages per hour."""
        limit = tx.account.limits.messages_per_hour
        if limit is None:
            return CONTINUE
        allowed, _ = await self.store.window_take(
            tx.account.id, "messages", tx.message_id, now=self.clock.now(), window=HOUR, limit=limit
        )
        if not allowed:
            return Defer(
                f"Rate limit: {limit} messages per hour; try again later",
                "rate_limit.messages_per_hour",
                facts={"limit": limit},
            )
        return CONTINUE

    async def on_rcpt(self, tx: Transaction, recipient: str) -> Verdict:
        """Recipients per message, per hour, and per destination domain per hour."""
        limits = tx.account.limits
        if (
            limits.recipients_per_message is not None
            and len(tx.recipients) >= limits.recipients_per_message
        ):
            return Defer(
                f"Rate limit: {limits.recipients_per_message} recipients per message;"
                " send the rest in another message",
                "rate_limit.recipients_per_message",
                facts={"limit": limits.recipients_per_message, "recipients": len(tx.recipients)},
            )
        domain = normalize_address(recipient).rpartition("@")[2]
        counters = [
            (kind, limit)
            for kind, limit in (
                ("recipients", limits.recipients_per_hour),
                (f"domain:{domain}", limits.per_domain_per_hour),
            )
            if limit is not None
        ]
        if not counters:
            return CONTINUE
        # Both counters in one write, all or none: a deferred recipient spends no budget.
        refused = await self.store.window_take_all(
            tx.account.id, counters, now=self.clock.now(), window=HOUR
        )
        if refused is None:
            return CONTINUE
        hourly = refused == "recipients"
        limit = limits.recipients_per_hour if hourly else limits.per_domain_per_hour
        what = "per hour" if hourly else "per domain per hour"
        return Defer(
            f"Rate limit: {limit} recipients {what}; try again later",
            f"rate_limit.{'recipients_per_hour' if hourly else 'per_domain_per_hour'}",
            facts={"limit": limit},
        )
