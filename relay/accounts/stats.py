"""Account statistics in hourly buckets, and the complaint- and bounce-rate thresholds.

What each account's mail did: delivered, refused, unsubscribes, complaints, bounces.

Frequent counts (delivered, refused) are added up in memory and written every few seconds, so
they cost no write per message; a crash loses at most that interval of counts. Feedback events
(complaints, bounces, unsubscribes) are written at once, before a rate is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from relay.accounts.abuse import halt
from relay.errors import StoreError
from relay.logging import get_logger

if TYPE_CHECKING:
    from relay.clock import Clock
    from relay.config import Config, RateThreshold
    from relay.storage.base import Store

log = get_logger(__name__)
FLUSH_INTERVAL = 5.0
RateName = Literal["complaint_rate", "bounce_rate"]


class StatsRecorder:
    """Buffers counts per (account, kind) and writes them in one batch."""

    def __init__(self, store: Store, clock: Clock) -> None:
        """Write to `store`, bucketed by `clock`."""
        self.store = store
        self.clock = clock
        self._pending: Counter[tuple[str, str]] = Counter()

    def count(self, account_id: str | None, kind: str, amount: int = 1) -> None:
        """Add `amount` to the account's `kind` (no-op for mail without an account)."""
        if account_id is not None and amount > 0:
            self._pending[(account_id, kind)] += amount

    async def flush(self) -> None:
        """Write what was counted; on a store error keep it for the next flush."""
        if not self._pending:
            return
        pending, self._pending = self._pending, Counter()
        now = self.clock.now()
        try:
            await self.store.add_stats([(a, k, now, n) for (a, k), n in pending.items()])
        except StoreError as exc:
            self._pending.update(pending)
            log.error("stats_flush_failed", error=str(exc))

    async def run(self, interval: float = FLUSH_INTERVAL) -> None:
        """Flush every `interval` seconds until cancelled (then flush once more)."""
        try:
            while True:
                await asyncio.sleep(interval)
                await self.flush()
        finally:
            with contextlib.suppress(StoreError):
                await self.flush()


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
