"""Suspiciously large broadcasts are halted at once.

Recipients are counted per (account, campaign key) over `limits.broadcast_window`; the campaign
key survives personalisation (relay.mail.campaign). Past `limits.suspicious_broadcast` the message
is refused and the account suspended (reason `broadcast_halted`), which holds its queued mail.
The count is left in `tx.campaign_recipients` for the unsubscribe policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.policy import CONTINUE, Reject, RuleSettings, StorePolicy, Verdict

if TYPE_CHECKING:
    from relay.policy import Submission, Transaction


class Settings(RuleSettings):
    """`policies.broadcast` (thresholds are per account, in `limits`)."""


class Policy(StorePolicy):
    """Counts each campaign's recipients; halts one that grows past the threshold."""

    name = "broadcast"
    required = True
    after = ("rate_limit",)  # only recipients that got past the limits count

    async def on_data(self, tx: Transaction, submission: Submission) -> Verdict:
        """Add this message's recipients to its campaign; halt past the threshold."""
        limits = tx.account.limits
        now = self.clock.now()
        total = await self.store.record_campaign(
            tx.account.id,
            submission.campaign,
            len(tx.recipients),
            now=now,
            window=limits.broadcast_window,
        )
        tx.campaign_recipients = total
        if total > limits.suspicious_broadcast:
            await self.halt(
                self.store,
                tx.account.id,
                "broadcast_halted",
                count=total,
                threshold=limits.suspicious_broadcast,
                now=now,
            )
            return Reject(
                f"Broadcast halted: {total} recipients of one campaign; the account is suspended",
                "broadcast.halted",
                facts={
                    "campaign": submission.campaign,
                    "recipients": total,
                    "threshold": limits.suspicious_broadcast,
                },
            )
        return CONTINUE
