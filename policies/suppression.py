"""Suppressed recipients (unsubscribed, complained, bounced, listed) are refused at RCPT.

A suppression matches every spelling of the mailbox (`suppression_key`: case, `+tag`, Gmail's
dots). Each refusal says what the CRM should do. Sending to a suppressed address counts toward
suspension only once the suppression is older than `limits.suppression_grace` (72 h): until then
the CRM may not have learned of it yet, and the refusal alone protects the recipient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.policy import CONTINUE, Reject, RuleSettings, StorePolicy, Verdict

if TYPE_CHECKING:
    from relay.policy import Transaction

_WHY = {
    "unsubscribe": "has unsubscribed from this sender",
    "complaint": "has reported this sender's mail as spam",
    "bounce": "does not exist (an earlier message bounced)",
}
_DO = "remove it from your list"


class Settings(RuleSettings):
    """`policies.suppression` (nothing to set: suppression cannot be turned off)."""


class Policy(StorePolicy):
    """550 5.7.1 for a recipient on the account's or the global suppression list."""

    name = "suppression"
    required = True
    after = ("from_domain",)  # nothing is said about recipients to a sender not allowed

    async def on_rcpt(self, tx: Transaction, recipient: str) -> Verdict:
        """Refuse a suppressed recipient (a store failure raises: the pipeline defers)."""
        found = await self.store.suppressed(recipient, tx.account.id)
        if found is None:
            return CONTINUE
        why = _WHY.get(found.reason, "is on this sender's suppression list")
        refusal = Reject(
            f"<{recipient}> {why}; {_DO}",
            f"suppression.{found.reason}",
            facts={"scope": found.scope, "suppressed_at": found.created_at},
        )
        limits = tx.account.limits
        now = self.clock.now()
        if now - found.created_at < limits.suppression_grace:
            return refusal  # the CRM may not know yet: refused, not counted
        # Mailing people who said stop days ago is counted; too often and the account is halted.
        _, count = await self.store.window_take(
            tx.account.id, "suppressed_send", recipient, now=now, window=limits.abuse_window
        )
        if count > limits.suppression_violations:
            await self.halt(
                self.store,
                tx.account.id,
                "suppression_violations",
                count=count,
                threshold=limits.suppression_violations,
                now=now,
            )
        return refusal
