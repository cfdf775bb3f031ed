"""The HTTP server (aiohttp): health and metrics now; unsubscribe pages and forms build on it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.errors import StoreError
from relay.metrics import REGISTRY

if TYPE_CHECKING:
    from relay.storage.base import Store

STORE_KEY = web.AppKey("store", object)


async def healthz(request: web.Request) -> web.Response:
    """200 when the store answers, 503 otherwise."""
    store: Store = request.app[STORE_KEY]  # type: ignore[assignment]
    try:
        await store.ping()
    except StoreError:
        return web.json_response({"status": "unavailable", "store": "down"}, status=503)
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    del request
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def make_app(store: Store) -> web.Application:
    """The aiohttp application."""
    app = web.Application()
    app[STORE_KEY] = store
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
