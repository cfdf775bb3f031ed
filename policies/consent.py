"""Only permission-based mail: recipients need an opt-in record where the account says so.

`consent: enforce`: a recipient without a standing opt-in record gets 550 5.7.1 at RCPT.
`consent: monitor`: accepted and logged. In both, distinct recipients without a record are
counted per account over `limits.abuse_window`; more than `limits.unsolicited_bulk` (10) is
unsolicited bulk, and the account is suspended at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.logging import get_logger
from relay.policy import CONTINUE, Reject, RuleSettings, StorePolicy, Verdict
from relay.storage.records import normalize_address

if TYPE_CHECKING:
    from relay.policy import Transaction

log = get_logger(__name__)


class Settings(RuleSettings):
    """`policies.consent` (per-account settings live in `accounts[].consent` and `limits`)."""


class Policy(StorePolicy):
    """Checks each recipient against the opt-in records."""

    name = "consent"
    required = True
    after = ("suppression",)  # a suppressed address is refused as such, not counted as bulk

    async def on_rcpt(self, tx: Transaction, recipient: str) -> Verdict:
        """Refuse (enforce) or log (monitor) a recipient without opt-in; halt unsolicited bulk."""
        account = tx.account
        if account.consent == "off" or await self.store.consent(account.id, recipient):
            return CONTINUE
        limits = account.limits
        now = self.clock.now()
        # Counting stops one past the threshold: beyond it the answer no longer changes, and the
        # window stays small whatever an abusive sender tries.
        allowed, count = await self.store.window_take(
            account.id,
            "non_consented",
            normalize_address(recipient),
            now=now,
            window=limits.abuse_window,
            limit=limits.unsolicited_bulk + 1,
            distinct=True,
        )
        if not allowed or count > limits.unsolicited_bulk:
            await self.halt(
                self.store,
                account.id,
                "unsolicited_bulk",
                count=count,
                threshold=limits.unsolicited_bulk,
                now=now,
            )
            return Reject(
                f"Unsolicited bulk: {count} recipients without opt-in; the account is suspended",
                "consent.unsolicited_bulk",
                facts={"count": count, "threshold": limits.unsolicited_bulk},
            )
        if account.consent == "enforce":
            return Reject(
                f"<{recipient}> has no opt-in record with this sender; send only to subscribers"
                " whose opt-in you can show (import the records, or use a confirmed opt-in form)",
                "consent.missing",
                facts={"count": count, "threshold": limits.unsolicited_bulk},
            )
        log.info(
            "consent_missing", recipient=recipient, count=count, threshold=limits.unsolicited_bulk
        )
        return CONTINUE
