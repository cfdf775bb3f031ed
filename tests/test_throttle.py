"""Per-IP connection cap and failed-AUTH throttle, with an injected clock."""

from __future__ import annotations

import asyncio

from relay.clock import ManualClock
from relay.smtp.throttle import ConnectionLimiter, FailureThrottle


def test_connection_limiter_counts_per_ip():
    """The cap applies per address; a released slot can be taken again."""
    limiter = ConnectionLimiter(2)
    assert limiter.acquire("192.0.2.1")
    assert limiter.acquire("192.0.2.1")
    assert not limiter.acquire("192.0.2.1")
    assert limiter.acquire("192.0.2.2")
    limiter.release("192.0.2.1")
    assert limiter.acquire("192.0.2.1")
    assert limiter.active("192.0.2.1") == 2


def test_failure_throttle_window_slides():
    """N failures within the window block; old failures age out."""
    clock = ManualClock()
    throttle = FailureThrottle(3, 60, clock)
    for _ in range(2):
        throttle.record("192.0.2.1")
        clock.advance(10)
    assert not throttle.blocked("192.0.2.1")
    throttle.record("192.0.2.1")
    assert throttle.blocked("192.0.2.1")
    assert not throttle.blocked("192.0.2.9")
    clock.advance(41)  # the first failure is now older than 60 s
    assert not throttle.blocked("192.0.2.1")
    clock.advance(60)
    throttle.prune()
    assert throttle._failures == {}  # nothing kept for quiet addresses


def test_failure_throttle_memory_stays_bounded():
    """Failures from many addresses are forgotten once they leave the window."""
    clock = ManualClock()
    throttle = FailureThrottle(5, 60, clock)
    for n in range(10_000):
        throttle.record(f"198.51.{n // 256}.{n % 256}")
        clock.advance(0.1)
    assert len(throttle._failures) <= 600 + 256


async def test_turns_run_one_at_a_time_per_address_and_leave_nothing():
    """Checks from one address take turns; other addresses do not wait; no state is kept."""
    throttle = FailureThrottle(3, 60, ManualClock())
    inside: list[str] = []
    most = 0

    async def check(ip: str) -> None:
        nonlocal most
        async with throttle.turn(ip):
            inside.append(ip)
            most = max(most, inside.count("192.0.2.1"))
            await asyncio.sleep(0.01)
            inside.remove(ip)

    await asyncio.gather(*(check("192.0.2.1") for _ in range(5)), check("192.0.2.2"))
    assert most == 1
    assert throttle._turns == {}
