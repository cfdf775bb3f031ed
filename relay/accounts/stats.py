"""Account statistics in hourly buckets, and the complaint- and bounce-rate thresholds.

What each account's mail did: delivered, refused, unsubscribes, complaints, bounces.

Delivered and refused are counted by the store in the transaction of their events (the copy's
outcome, the refusal), so the counts are what the events feed says, also after a crash
(`relay.storage.events.event_stats`). Feedback (complaints, bounces, unsubscribes) is counted
at once by the intake, before a rate is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from relay.accounts.abuse import halt
from relay.logging import get_logger

if TYPE_CHECKING:
    from relay.config import Config, RateThreshold
    from relay.storage.base import Store

log = get_logger(__name__)
FLUSH_INTERVAL = 5.0
RateName = Literal["complaint_rate", "bounce_rate"]


@dataclass(frozen=True)
class Rate:
    """Events per delivered message in a window."""

    events: int
    delivered: int

    @property
    def value(self) -> float:
        """The rate (0 without deliveries)."""
        return self.events / self.delivered if self.delivered else 0.0


async def check_rate(
    store: Store, config: Config, account_id: str, name: RateName, *, now: float
) -> Rate:
    """Warn or suspend the account when its complaint or bounce rate crosses the thresholds."""
    threshold: RateThreshold = getattr(config.feedback, name)
    kind = "complaint" if name == "complaint_rate" else "bounce"
    totals = (await store.stats(since=now - threshold.window, account_id=account_id)).get(
        account_id, {}
    )
    rate = Rate(totals.get(kind, 0), totals.get("delivered", 0))
    if rate.delivered < threshold.min_volume:
        return rate
    fields = {
        "account_id": account_id,
        "rule": name,
        "rate": round(rate.value, 6),
        "events": rate.events,
        "delivered": rate.delivered,
        "window": threshold.window,
    }
    if rate.value >= threshold.suspend:
        log.warning("account_rate_exceeded", threshold=threshold.suspend, **fields)
        await halt(store, account_id, name, count=rate.value, threshold=threshold.suspend, now=now)
    elif rate.value >= threshold.warn:
        log.warning("account_rate_warning", threshold=threshold.warn, **fields)
    return rate
