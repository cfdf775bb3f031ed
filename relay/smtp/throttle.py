"""Per-client-IP defences of the SMTP ingress: a connection cap and a failed-AUTH throttle."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from relay.clock import Clock


class ConnectionLimiter:
    """At most `limit` simultaneous connections from one IP address."""

    def __init__(self, limit: int) -> None:
        """Allow `limit` connections per IP."""
        self.limit = limit
        self._open: dict[str, int] = defaultdict(int)

    def acquire(self, ip: str) -> bool:
        """Count a new connection from `ip`; False (and not counted) when over the cap."""
        if self._open[ip] >= self.limit:
            return False
        self._open[ip] += 1
        return True

    def release(self, ip: str) -> None:
        """Forget one connection from `ip`."""
        remaining = self._open.get(ip, 0) - 1
        if remaining > 0:
            self._open[ip] = remaining
        else:
            self._open.pop(ip, None)

    def active(self, ip: str) -> int:
        """Connections currently counted for `ip`."""
        return self._open.get(ip, 0)


class FailureThrottle:
    """Blocks an IP once it has failed `limit` times within `window` seconds."""

    def __init__(self, limit: int, window: float, clock: Clock) -> None:
        """Block after `limit` failures in `window` seconds."""
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}  # address -> lock, holders+waiters
        self._records = 0

    def _recent(self, ip: str) -> deque[float]:
        failures = self._failures.setdefault(ip, deque())
        cutoff = self.clock.now() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[ip]
            return deque()
        return failures

    def record(self, ip: str) -> None:
        """Count one failure from `ip`."""
        self._recent(ip)
        self._failures.setdefault(ip, deque()).append(self.clock.now())
        self._records += 1
        if self._records % 256 == 0:  # keep memory bounded when failures come from many IPs
            self.prune()

    def prune(self) -> None:
        """Forget every address whose failures have all left the window."""
        for ip in list(self._failures):
            self._recent(ip)

    def blocked(self, ip: str) -> bool:
        """Say whether `ip` has failed too often recently."""
        return len(self._recent(ip)) >= self.limit

    @contextlib.asynccontextmanager
    async def turn(self, ip: str) -> AsyncIterator[None]:
        """One secret check at a time for `ip`: check `blocked`, verify and `record` inside.

        Each turn sees the failures of the turns before it, so however many attempts arrive at
        once, at most `limit` guesses from one address are verified per window; correct ones
        arriving together only wait. Nothing is kept for an address nobody is waiting for.
        """
        lock, waiting = self._turns.get(ip, (asyncio.Lock(), 0))
        self._turns[ip] = (lock, waiting + 1)
        try:
            async with lock:
                yield
        finally:
            lock, waiting = self._turns[ip]
            if waiting <= 1:
                del self._turns[ip]
            else:
                self._turns[ip] = (lock, waiting - 1)
