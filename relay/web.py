"""The HTTP server (aiohttp): unsubscribe pages and one-click, /healthz and /metrics.

`GET /u/{token}` shows the account's branded page with an Unsubscribe button and changes
nothing (link scanners fetch every link). `POST /u/{token}` unsubscribes: the RFC 8058 one-click
body (form-data or urlencoded, parsed leniently) or the page's button. It answers 200 with a
confirmation page, is idempotent, and never redirects. A forged or expired token gets a 400 page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.errors import StoreError
from relay.metrics import REGISTRY
from relay.templates import page
from relay.unsubscribe import Method, unsubscribe

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.clock import Clock
    from relay.runtime import Runtime
    from relay.storage.base import Store
    from relay.tokens import Claim

STORE_KEY = web.AppKey("store", object)
RUNTIME_KEY = web.AppKey("runtime", object)
CLOCK_KEY = web.AppKey("clock", object)
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}


def _store(request: web.Request) -> Store:
    store: Store = request.app[STORE_KEY]  # type: ignore[assignment]
    return store


def _runtime(request: web.Request) -> Runtime:
    runtime: Callable[[], Runtime] = request.app[RUNTIME_KEY]  # type: ignore[assignment]
    return runtime()


def _html(body: str, status: int) -> web.Response:
    return web.Response(
        text=body, status=status, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS
    )


def _brand(runtime: Runtime, claim: Claim | None) -> tuple[str, str]:
    account = runtime.config.account(claim.account_id) if claim else None
    if account is None:
        return "this sender", "en"
    return account.brand.name, account.brand.language


async def unsubscribe_page(request: web.Request) -> web.Response:
    """The confirmation page; changes nothing."""
    runtime = _runtime(request)
    claim = runtime.tokens.verify(request.match_info["token"])
    name, language = _brand(runtime, claim)
    if claim is None:
        return _html(page(name, language, "invalid"), 400)
    body = page(name, language, "confirm", address=claim.recipient, action=request.path)
    return _html(body, 200)


async def unsubscribe_post(request: web.Request) -> web.Response:
    """One-click (RFC 8058) or the page's button: suppress the recipient, say so."""
    runtime = _runtime(request)
    claim = runtime.tokens.verify(request.match_info["token"])
    name, language = _brand(runtime, claim)
    if claim is None:
        return _html(page(name, language, "invalid"), 400)
    try:
        form = await request.post()
    except (ValueError, UnicodeDecodeError, web.HTTPException):
        form = None  # RFC 8058 section 8.3's own example is malformed: the POST itself decides
    method: Method = "page" if form is not None and form.get("source") == "page" else "one_click"
    clock: Clock = request.app[CLOCK_KEY]  # type: ignore[assignment]
    try:
        await unsubscribe(_store(request), runtime.config, claim, method=method, now=clock.now())
    except StoreError:
        return _html(page(name, language, "unavailable"), 503)
    return _html(page(name, language, "done", address=claim.recipient), 200)


async def healthz(request: web.Request) -> web.Response:
    """200 when the store answers, 503 otherwise."""
    try:
        await _store(request).ping()
    except StoreError:
        return web.json_response({"status": "unavailable", "store": "down"}, status=503)
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    del request
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def make_app(store: Store, runtime: Callable[[], Runtime], clock: Clock) -> web.Application:
    """The aiohttp application."""
    app = web.Application(client_max_size=64 * 1024)
    app[STORE_KEY] = store
    app[RUNTIME_KEY] = runtime
    app[CLOCK_KEY] = clock
    app.router.add_get("/u/{token}", unsubscribe_page)
    app.router.add_post("/u/{token}", unsubscribe_post)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
