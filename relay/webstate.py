"""What the HTTP handlers share, kept on the aiohttp app: store, runtime, clock, throttle."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.clock import Clock
    from relay.runtime import Runtime
    from relay.storage.base import Store
    from relay.throttle import FailureThrottle

STORE_KEY = web.AppKey("store", object)
RUNTIME_KEY = web.AppKey("runtime", object)
CLOCK_KEY = web.AppKey("clock", object)
THROTTLE_KEY = web.AppKey("throttle", object)


def share(
    app: web.Application,
    store: Store,
    runtime: Callable[[], Runtime],
    clock: Clock,
    throttle: FailureThrottle,
) -> None:
    """Put the shared objects on `app`."""
    app[STORE_KEY] = store
    app[RUNTIME_KEY] = runtime
    app[CLOCK_KEY] = clock
    app[THROTTLE_KEY] = throttle


def store_of(request: web.Request) -> Store:
    """The store."""
    store: Store = request.app[STORE_KEY]  # type: ignore[assignment]
    return store


def runtime_of(request: web.Request) -> Runtime:
    """The runtime (config, tokens) in force now."""
    runtime: Callable[[], Runtime] = request.app[RUNTIME_KEY]  # type: ignore[assignment]
    return runtime()


def clock_of(request: web.Request) -> Clock:
    """The clock."""
    clock: Clock = request.app[CLOCK_KEY]  # type: ignore[assignment]
    return clock


def throttle_of(request: web.Request) -> FailureThrottle:
    """The per-client throttle of failed credentials (admin token, API keys)."""
    throttle: FailureThrottle = request.app[THROTTLE_KEY]  # type: ignore[assignment]
    return throttle
