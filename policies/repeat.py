"""The same message to the same person again and again is spam: repeats are refused, loops halt.

Copies are counted per (account, campaign key, recipient) over `limits.repeat_window` (24 h),
as the spool commits them (the check reads; it writes nothing itself, so two messages racing
may let one copy past the limit):
the campaign key survives personalisation (relay.mail.campaign), so changing a name or a token
does not make a message new. The copy past `limits.repeat_per_recipient` (3) is refused for that
recipient (550 5.7.1, rule `repeat.per_recipient`); the message's other recipients are spooled,
and the CRM learns of the refused one from its `recipient.refused` event (a message all of whose
recipients are refused gets the refusal as its reply). More than `limits.repeat_loop` (100)
distinct recipients refused for repeats within `limits.abuse_window` is a sender looping: the
message is refused and the account suspended (`repeat.loop`), like a broadcast halt.

Transactional mail stays usable: a password reset asked for twice is two copies, well inside 3
a day; an account whose users legitimately get one template many times a day (alerts, one-time
codes) raises `repeat_per_recipient` for that account.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from relay.policy import CONTINUE, Reject, RuleSettings, StorePolicy, Verdict

if TYPE_CHECKING:
    from relay.policy import Submission, Transaction


class Settings(RuleSettings):
    """`policies.repeat` (its thresholds are per account, in `limits`)."""


class Policy(StorePolicy):
    """Numbers each copy of a campaign per recipient; refuses repeats, halts loops."""

    name = "repeat"
    required = True
    after = ("rate_limit",)  # refused recipients spent no budget
    before = ("broadcast",)  # a repeat refused here is not counted in the campaign's size

    async def on_data(self, tx: Transaction, submission: Submission) -> Verdict:
        """Refuse each recipient past the limit; halt past the loop threshold."""
        limits = tx.account.limits
        now = self.clock.now()
        earlier = await self.store.repeat_counts(
            tx.account.id,
            submission.campaign,
            list(tx.recipients),
            since=now - limits.repeat_window,
        )
        numbers = {recipient: count + 1 for recipient, count in earlier.items()}
        repeated = [r for r in tx.recipients if numbers[r] > limits.repeat_per_recipient]
        if not repeated:
            return CONTINUE
        # One write each, issued together: they share the store's group commits instead of
        # waiting for one commit per refused recipient.
        taken = await asyncio.gather(
            *(
                self.store.window_take(
                    tx.account.id,
                    "repeat_refused",
                    recipient.lower(),
                    now=now,
                    window=limits.abuse_window,
                    distinct=True,
                )
                for recipient in repeated
            )
        )
        loops = max(count for _, count in taken)
        if loops > limits.repeat_loop:
            await self.halt(
                self.store,
                tx.account.id,
                "repeat_loop",
                count=loops,
                threshold=limits.repeat_loop,
                now=now,
            )
            return Reject(
                f"Repeated sends: {loops} recipients got one campaign more than"
                f" {limits.repeat_per_recipient} times; the account is suspended",
                "repeat.loop",
                facts={"recipients": loops, "threshold": limits.repeat_loop},
            )
        for recipient in repeated:
            self.refuse_recipient(
                tx,
                recipient,
                Reject(
                    f"<{recipient}> already got this message {limits.repeat_per_recipient} times"
                    f" within {_span(limits.repeat_window)}; do not send it again",
                    "repeat.per_recipient",
                    facts={"copy": numbers[recipient], "limit": limits.repeat_per_recipient},
                ),
            )
        if not tx.recipients:  # every recipient refused: that is the message's reply
            _, (_, first) = next(iter(tx.refused.items()))
            return first
        return CONTINUE


def _span(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:g} hours" if hours != 24 else "a day"  # noqa: PLR2004
